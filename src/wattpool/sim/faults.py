"""Disruptions in the simulation: failures, curtailment, the hourly price.

A mixin of ``engine.Simulation`` (it uses the engine's instance state), kept apart so
each file stays about one thing. A failed or curtailed instance loses its cache and
everything on it moves on with what it has generated (``_displace``), exactly as the
live dispatcher continues a stream on another node.
"""

from __future__ import annotations

import math

import numpy as np

from wattpool.policy.candidates import CURTAILED, IN_FLIGHT, KV_USED, PRICE, QUEUED, READY

# Event kinds (the heap holds (time, seq, kind, a, b)) and request states.
FINISH, FAIL, RECOVER, CURTAIL, RELEASE, HOUR, UNQUARANTINE = range(7)
PENDING, DONE, REJECTED = 0, 1, 2


class Disruptions:
    """Methods of ``engine.Simulation`` that disturb it; they use its state."""

    def _displace(self, i: int, now: float) -> None:
        """Everyone on instance ``i`` moves on with what it has (its cache is gone)."""
        iid = self.table.ids[i]
        self.truth.forget(iid)
        self.policy.forget(iid)
        running = list(self.active[i])
        waiting = list(self.queue[i])
        self.active[i].clear()
        self.queue[i].clear()
        self.backlog[i].clear()
        self.busy[i] = 0
        self.kv[i] = 0
        self.prefill_free[i] = now
        m = self.table.m
        m[IN_FLIGHT, i] = m[QUEUED, i] = m[KV_USED, i] = 0.0
        for r in running:
            pe, tp = self.pe[r], self.tp[r]
            done = 0 if now < pe else min(self.remaining[r], 1 + int((now - pe) / tp))
            if done == 0 and self.first_token[r] == pe:
                self.first_token[r] = math.nan  # that first token never came
            self.delivered[r] += done
            self.remaining[r] -= done
            self.cur_prompt[r] += done
            if self.remaining[r] == 0:  # its last token was due now
                self.status[r] = DONE
                self.finish_t[r] = now
                self.site_tokens[self.site_of[i]] += self.tokens_total[r]
                continue
            self.counters["migrations"] += 1
            self._dispatch(r, now, frozenset({iid}))
        for r in waiting:
            self.counters["migrations"] += 1
            self._dispatch(r, now, frozenset({iid}))

    def _fail(self, i: int, now: float) -> None:
        if not self.flags[i] & READY:
            return
        self.counters["failures"] += 1
        self._set_flags(i, self.flags[i] & ~READY)
        self._displace(i, now)
        site = self.fleet.sites[self.site_of[i]]
        self._push(now + self.fault_rng.exponential(site.mttr_s), RECOVER, i)

    def _curtail(self, s: int, now: float, *, random_event: bool, until: float = 0.0) -> None:
        if random_event:
            self.random_curtailed[s] += 1
            self._push(until, RELEASE, s)
            self.counters["curtailments"] += 1
        else:
            self.price_curtailed[s] = True
            self.counters["price_curtailments"] += 1
        for i in self._site_rows[s]:
            if not self.flags[i] & CURTAILED:
                self._set_flags(i, self.flags[i] | CURTAILED)
                self._displace(i, now)

    def _release(self, s: int, *, random_event: bool) -> None:
        if random_event:
            self.random_curtailed[s] -= 1
        else:
            self.price_curtailed[s] = False
        if self.random_curtailed[s] == 0 and not self.price_curtailed[s]:
            for i in self._site_rows[s]:
                self._set_flags(i, self.flags[i] & ~CURTAILED)

    def _hour(self, hour: int, now: float) -> None:
        fleet, m = self.fleet, self.table.m
        for s, site in enumerate(fleet.sites):
            price = fleet.site_price(site, hour)
            self.site_price[s] = price
            over = self.cfg.faults and price > site.curtail_above
            if over and not self.price_curtailed[s]:
                self._curtail(s, now, random_event=False)
            elif not over and self.price_curtailed[s]:
                self._release(s, random_event=False)
            for i in self._site_rows[s]:
                m[PRICE, i] = price
        self.table.refresh()

    def _schedule_hours(self) -> None:
        self._site_rows: list[range] = []
        start = 0
        for count in self.fleet.instances_per_site():
            self._site_rows.append(range(start, start + count))
            start += count
        first = self.cfg.start_hour
        hour = math.floor(first)
        self._hour(hour, 0.0)
        t = (hour + 1 - first) * 3600.0
        while t < self.duration:  # bounded by the duration
            hour += 1
            self._push(t, HOUR, hour)
            t += 3600.0

    def _schedule_faults(self) -> None:
        rng, horizon = self.fault_rng, self.duration
        for s, site in enumerate(self.fleet.sites):
            for i in self._site_rows[s]:
                for when in np.cumsum(rng.exponential(site.mtbf_h * 3600.0, size=3)):
                    if when < horizon:
                        self._push(float(when), FAIL, i)
            rate = site.curtail_per_day / 86400.0
            for when in np.cumsum(rng.exponential(1.0 / rate, size=2)) if rate > 0 else ():
                if when < horizon:
                    self._push(float(when), CURTAIL, s,
                               int(rng.exponential(site.curtail_s)) + 1)

