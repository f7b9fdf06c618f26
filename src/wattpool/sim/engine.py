"""The discrete-event simulation: arrivals, routing through policy/, instances, faults.

One loop takes the next event, either the next arrival (from the sorted workload) or the
earliest scheduled event (a heap): a stream finishing, an instance failing or coming
back, a site curtailed or released, the hourly price. Time is the injected ``SimClock``;
nothing here reads the wall clock.

A request costs O(1) events: it is routed on arrival, queues on its instance if all slots
are taken, prefills (one at a time per instance), then decodes at the TPOT of the batch it
joins and finishes in one event (the model in ``perf.py``). On a failure or curtailment,
every request on the instance moves on with what it has generated so far (a
continuation), as the live dispatcher does; after ``max_attempts`` it is rejected with the
reason. Rejections always carry one.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections import deque
from collections.abc import Callable

import numpy as np

from wattpool.clock import Clock
from wattpool.policy.baselines import RoutingPolicy, make_policy
from wattpool.policy.candidates import (
    ERROR_RATE,
    FLAGS,
    IN_FLIGHT,
    INV_DECODE,
    INV_PREFILL,
    KV_USED,
    MAX_BATCH,
    MAX_QUEUE,
    QUARANTINED,
    QUEUED,
    READY,
    REGION,
    WATTS,
    CandidateTable,
    RequestSpec,
)
from wattpool.policy.decision import explain
from wattpool.policy.scoring import DEFAULT_WEIGHTS
from wattpool.sim.cache import PromptBlocks, SegmentCache
from wattpool.sim.clock import SimClock
from wattpool.sim.faults import (
    CURTAIL,
    DONE,
    FAIL,
    FINISH,
    HOUR,
    PENDING,
    RECOVER,
    REJECTED,
    RELEASE,
    UNQUARANTINE,
    Disruptions,
)
from wattpool.sim.fleet import Fleet
from wattpool.sim.types import SimConfig, SimResult
from wattpool.sim.workload import Workload

J_PER_MWH = 3.6e9
PREFIX_AWARE = ("prefix-threshold", "wattpool")
# Ablations of the default policy, by name: (policy, constructor options).
VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "wattpool-no-energy": ("wattpool", {"name": "wattpool-no-energy", "weights": {
        k: w for k, w in DEFAULT_WEIGHTS.items() if k != "energy"}}),
    "wattpool-no-prefix": ("wattpool", {"name": "wattpool-no-prefix", "weights": {
        k: w for k, w in DEFAULT_WEIGHTS.items() if k != "prefix"}}),
}


def _ints(values: np.ndarray) -> array[int]:
    """A compact int64 array.array (8 bytes an item; a list would hold 36) from numpy."""
    out = array("q")
    out.frombytes(np.ascontiguousarray(values, dtype=np.int64).tobytes())
    return out


def _f(n: int, value: float = 0.0) -> array[float]:
    return array("d", [value]) * n


def _i(n: int) -> array[int]:
    return array("q", [0]) * n


class Simulation(Disruptions):
    def __init__(self, fleet: Fleet, workload: Workload, policy: RoutingPolicy | str,
                 cfg: SimConfig | None = None, *, seed: int = 0,
                 clock: SimClock | None = None) -> None:
        self.cfg = cfg or SimConfig()
        self.fleet = fleet
        self.wl = workload
        self.clock: Clock = clock or SimClock()
        self._clock = self.clock if isinstance(self.clock, SimClock) else None
        self.rng = np.random.default_rng(seed)
        self.fault_rng = np.random.default_rng(seed + 1)
        self._build_instances()
        self.policy = policy if not isinstance(policy, str) else self._make_policy(policy)

    def _make_policy(self, name: str) -> RoutingPolicy:
        """A policy by name; prefix-aware ones read the instances' caches (the truth index,
        as if nodes reported their cache summaries) unless the config asks them to keep
        their own estimate from what they routed."""
        base, options = VARIANTS.get(name, (name, {}))
        if base not in PREFIX_AWARE:
            return make_policy(base, **options)
        options = {**options, "block_tokens": self.cfg.block_tokens}
        if not self.cfg.router_prefix_estimate:
            options["index"] = self.truth
        return make_policy(base, **options)

    # --- set-up -------------------------------------------------------------------------

    def _build_instances(self) -> None:
        fleet, cfg = self.fleet, self.cfg
        ids: list[str] = []
        site_of: list[int] = []
        for s, (site, count) in enumerate(zip(fleet.sites, fleet.instances_per_site(),
                                              strict=True)):
            for k in range(count):
                ids.append(f"{site.site_id}/i{k}")
                site_of.append(s)
        n = len(ids)
        self.site_of = site_of
        regions = {r: i for i, r in enumerate(fleet.regions)}
        table = CandidateTable(ids, model_id=cfg.model, regions=fleet.regions,
                               gateways=fleet.regions)
        rtt = fleet.rtt_matrix()
        self.truth = SegmentCache(1 << 20)
        prof = [fleet.profiles[fleet.sites[s].gpu] for s in site_of]
        self.inv_prefill = [1.0 / p.prefill_tps for p in prof]
        self.tpot1 = [p.tpot_s for p in prof]
        self.slope = [p.tpot_slope_s for p in prof]
        self.max_batch = [p.max_batch for p in prof]
        self.kv_cap = [p.kv_tokens for p in prof]
        self.w_prefill = [p.watts_prefill for p in prof]
        self.w_decode = [p.watts_decode for p in prof]
        self.w_idle = [p.watts_idle for p in prof]
        # Share of attempts that fail before the first token (0 without faults).
        self.flaky = [fleet.sites[s].error_rate if cfg.faults else 0.0 for s in site_of]
        for i, p in enumerate(prof):
            site = fleet.sites[site_of[i]]
            r = regions[site.region]
            col = table.m[:, i]
            col[MAX_BATCH] = p.max_batch
            col[MAX_QUEUE] = math.ceil(cfg.queue_factor * p.max_batch)
            col[INV_PREFILL] = 1.0 / p.prefill_tps
            col[INV_DECODE] = p.tpot(max(1, p.max_batch // 2))
            col[WATTS] = p.watts_per_stream()
            col[REGION] = r
            table.rtt[:, i] = rtt[:, r]
            table.node_ids[i] = site.site_id
            table.site_ids[i] = site.site_id
            self.truth.set_capacity(ids[i], int(p.kv_tokens * cfg.cache_share)
                                    // cfg.block_tokens)
        table.m[FLAGS] = READY
        table.refresh()
        self.table = table
        self.n_inst = n
        self.busy = [0] * n
        self.kv = [0] * n
        self.prefill_free = [0.0] * n
        self.queue: list[deque[int]] = [deque() for _ in range(n)]
        self.backlog: list[deque[float]] = [deque() for _ in range(n)]  # prefill starts ahead
        self.active: list[dict[int, None]] = [{} for _ in range(n)]
        self.flags = [READY] * n
        self.price_curtailed = [False] * len(fleet.sites)
        self.random_curtailed = [0] * len(fleet.sites)  # open random curtailments
        self.site_price = [0.0] * len(fleet.sites)

    def _set_flags(self, i: int, flags: int) -> None:
        self.flags[i] = flags
        self.table.set_flags(i, flags)

    # --- the loop -----------------------------------------------------------------------

    def run(self, progress: Callable[[float], None] | None = None) -> SimResult:
        wl, cfg = self.wl, self.cfg
        n = wl.n
        horizon = float(wl.t[-1]) if n else 0.0
        self.duration = max(horizon, 1.0)
        self._alloc(n)
        self.events: list[tuple[float, int, int, int, int]] = []
        self.seq = 0
        self._schedule_hours()
        if cfg.faults:
            self._schedule_faults()
        t_arr = array("d")
        t_arr.frombytes(np.ascontiguousarray(wl.t, dtype=np.float64).tobytes())
        nxt = 0
        events = self.events
        pop = heapq.heappop
        steps = 0
        now = 0.0
        clock = self._clock
        # Bounded: each arrival is taken once; each event was pushed by an arrival (at
        # most max_attempts finishes each) or scheduled up front (faults, hours).
        while nxt < n or events:
            if nxt < n and (not events or t_arr[nxt] <= events[0][0]):
                now = t_arr[nxt]
                if clock is not None:
                    clock.now = now
                self._arrive(nxt, now)
                nxt += 1
            else:
                now, _, kind, a, b = pop(events)
                if clock is not None:
                    clock.now = now
                self._handle(kind, a, b, now)
            steps += 1
            if progress is not None and steps % 20000 == 0:
                progress(min(1.0, nxt / max(n, 1)))
        if progress is not None:
            progress(1.0)
        self.end_s = max(now if steps else 0.0, self.duration)
        return self._result()

    def _push(self, when: float, kind: int, a: int, b: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.events, (when, self.seq, kind, a, b))

    def _handle(self, kind: int, a: int, b: int, now: float) -> None:
        if kind == FINISH:
            self._finish(a, b, now)
        elif kind == FAIL:
            self._fail(a, now)
        elif kind == RECOVER:
            self._set_flags(a, self.flags[a] | READY)
        elif kind == CURTAIL:
            self._curtail(a, now, random_event=True, until=now + b)
        elif kind == RELEASE:
            self._release(a, random_event=True)
        elif kind == HOUR:
            self._hour(a, now)
        elif kind == UNQUARANTINE:
            self.table.m[ERROR_RATE, a] = 0.0
            self._set_flags(a, self.flags[a] & ~QUARANTINED)

    def _alloc(self, n: int) -> None:
        wl = self.wl
        self.status = _i(n)
        self.first_token = _f(n, math.nan)
        self.finish_t = _f(n, math.nan)
        self.rtt_ms = _f(n)
        self.delivered = _i(n)
        self.cached = _i(n)
        self.prefilled = _i(n)
        self.energy_j = _f(n)
        self.energy_usd = _f(n)
        self.attempts = _i(n)
        self.att = _i(n)  # bumps on every (re)dispatch; stale FINISH events carry old ones
        self.inst_of = _i(n)
        self.remaining = _ints(wl.output)
        self.cur_prompt = _ints(wl.prompt)
        self.tokens_total = _ints(wl.prompt + wl.output)
        self.pe = _f(n)  # this attempt's prefill end
        self.tp = _f(n)  # this attempt's TPOT
        self.reasons: dict[int, str] = {}
        self.excluded: dict[int, set[str]] = {}
        n_sites = len(self.fleet.sites)
        self.site_busy = [0.0] * n_sites
        self.site_tokens = [0] * n_sites
        self.counters = {"decisions": 0, "errors": 0, "failures": 0, "curtailments": 0,
                         "price_curtailments": 0, "quarantines": 0, "migrations": 0}
        self.explanations: list[dict[str, object]] = []
        self.explain_at = set(np.linspace(0, max(n - 1, 0), self.cfg.explain_samples,
                                          dtype=int).tolist()) if n else set()
        self.sys_id = _ints(wl.sys_id)
        self.sys_len = _ints(wl.sys_len)
        self.conv = _ints(wl.conv)
        self.gateway = _ints(wl.gateway)

    # --- requests -----------------------------------------------------------------------

    def _arrive(self, r: int, now: float) -> None:
        self._dispatch(r, now, frozenset())

    def _dispatch(self, r: int, now: float, exclude: frozenset[str]) -> None:
        cfg, table = self.cfg, self.table
        prompt = self.cur_prompt[r]
        hashes = PromptBlocks(prompt, self.sys_id[r], self.sys_len[r], self.conv[r],
                              cfg.block_tokens)
        req = RequestSpec(cfg.model, prompt, self.remaining[r], hashes, self.gateway[r],
                          exclude)
        for _ in range(cfg.max_attempts):  # bounded retries of flaky sites
            if self.attempts[r] >= cfg.max_attempts:
                self._reject(r, now, f"failed on {self.attempts[r]} instances")
                return
            # A few decisions are taken explained (the same decision, with its report).
            telling = r in self.explain_at and len(self.explanations) < cfg.explain_samples
            d = self.policy.choose(req, table, self.rng, explain=telling)
            if telling:
                self.explanations.append(explain(d))
            self.counters["decisions"] += 1
            if d.chosen is None:
                self._reject(r, now, d.reason)
                return
            i = d.row
            self.policy.observe(req, table, i)
            self.attempts[r] += 1
            flaky = self.flaky[i]
            if flaky and self.fault_rng.random() < flaky:
                self.counters["errors"] += 1
                self._outcome(i, 1.0, now)
                req = RequestSpec(cfg.model, prompt, self.remaining[r], hashes,
                                  self.gateway[r], req.exclude | {table.ids[i]})
                continue
            if flaky:
                self._outcome(i, 0.0, now)
            self._admit(i, r, now)
            return
        self._reject(r, now, f"failed on {self.attempts[r]} instances")

    def _outcome(self, i: int, failed: float, now: float) -> None:
        m = self.table.m
        w = self.cfg.error_ewma
        rate = m[ERROR_RATE, i] = (1 - w) * m[ERROR_RATE, i] + w * failed
        if rate > self.cfg.quarantine_error_rate and not self.flags[i] & QUARANTINED:
            self.counters["quarantines"] += 1
            self._set_flags(i, self.flags[i] | QUARANTINED)
            self._push(now + self.cfg.quarantine_s, UNQUARANTINE, i)

    def _reject(self, r: int, now: float, reason: str) -> None:
        self.status[r] = REJECTED
        self.reasons[r] = reason or "rejected"

    def _admit(self, i: int, r: int, now: float) -> None:
        self.inst_of[r] = i
        self.att[r] += 1
        need = self.cur_prompt[r] + self.remaining[r]
        if self.busy[i] < self.max_batch[i] and self.kv[i] + need <= self.kv_cap[i]:
            self._start(i, r, now)
        else:
            self.queue[i].append(r)
            self._sync(i, now)

    def _sync(self, i: int, now: float) -> None:
        """What the instance would report: running streams, and waiting ones (for a slot,
        or admitted but with their prefill not started), as engines count them."""
        backlog = self.backlog[i]
        while backlog and backlog[0] <= now:
            backlog.popleft()
        m = self.table.m
        m[QUEUED, i] = len(self.queue[i]) + len(backlog)
        m[IN_FLIGHT, i] = self.busy[i] - len(backlog)

    def _start(self, i: int, r: int, now: float) -> None:
        cfg = self.cfg
        prompt = self.cur_prompt[r]
        remaining = self.remaining[r]
        iid = self.table.ids[i]
        hashes = PromptBlocks(prompt, self.sys_id[r], self.sys_len[r], self.conv[r],
                              cfg.block_tokens)
        cached = min(self.truth.depth(iid, hashes) * cfg.block_tokens, prompt - 1)
        self.truth.record(iid, hashes)
        begin = now if now > self.prefill_free[i] else self.prefill_free[i]
        pe = begin + (prompt - cached) * self.inv_prefill[i]
        self.prefill_free[i] = pe
        b = self.busy[i] + 1
        tp = self.tpot1[i] + self.slope[i] * (b - 1)
        end = pe + (remaining - 1) * tp
        self.busy[i] = b
        self.kv[i] += prompt + remaining
        if begin > now:
            self.backlog[i].append(begin)
        self.table.m[KV_USED, i] = self.kv[i] / self.kv_cap[i]
        self._sync(i, now)
        self.active[i][r] = None
        self.pe[r] = pe
        self.tp[r] = tp
        if math.isnan(self.first_token[r]):
            self.first_token[r] = pe
            self.rtt_ms[r] = self.table.rtt[self.gateway[r], i]
        joules = self.w_prefill[i] * (pe - begin) + self.w_decode[i] * (end - pe) / b
        self.energy_j[r] += joules
        self.energy_usd[r] += joules * max(self.site_price[self.site_of[i]], 0.0) / J_PER_MWH
        self.cached[r] += cached
        self.prefilled[r] += prompt
        self.site_busy[self.site_of[i]] += end - begin
        self._push(end, FINISH, r, self.att[r])

    def _finish(self, r: int, att: int, now: float) -> None:
        if att != self.att[r] or self.status[r] != PENDING:
            return  # the request moved on (failure, curtailment) since this was scheduled
        i = self.inst_of[r]
        self._leave(i, r, now)
        self.delivered[r] += self.remaining[r]
        self.remaining[r] = 0
        self.status[r] = DONE
        self.finish_t[r] = now
        self.rtt_ms[r] = self.table.rtt[self.gateway[r], i]
        self.site_tokens[self.site_of[i]] += self.tokens_total[r]
        self._drain_queue(i, now)

    def _leave(self, i: int, r: int, now: float) -> None:
        del self.active[i][r]
        self.busy[i] -= 1
        self.kv[i] -= self.cur_prompt[r] + self.remaining[r]
        self.table.m[KV_USED, i] = self.kv[i] / self.kv_cap[i]
        self._sync(i, now)

    def _drain_queue(self, i: int, now: float) -> None:
        q = self.queue[i]
        while q and self.busy[i] < self.max_batch[i]:
            r = q[0]
            if self.kv[i] + self.cur_prompt[r] + self.remaining[r] > self.kv_cap[i] \
                    and self.busy[i] > 0:
                break  # wait for KV to free up (an empty instance always takes the head)
            q.popleft()
            self._start(i, r, now)

    # --- result -------------------------------------------------------------------------

    def _result(self) -> SimResult:
        # Views of the run's buffers (read-only, no copy: a 10,000-site hour holds tens of
        # millions of requests).
        wl, fleet = self.wl, self.fleet
        slots = [0.0] * len(fleet.sites)
        idle_usd = 0.0
        for s, rows in enumerate(self._site_rows):
            for i in rows:
                slots[s] += self.max_batch[i]
                idle_usd += (self.w_idle[i] * self.end_s * max(self.site_price[s], 0.0)
                             / J_PER_MWH)
        return SimResult(
            policy=self.policy.name, duration_s=self.duration,
            status=np.frombuffer(self.status, dtype=np.int64),
            arrival=wl.t,
            first_token=np.frombuffer(self.first_token),
            finish=np.frombuffer(self.finish_t),
            rtt=np.frombuffer(self.rtt_ms), prompt=wl.prompt,
            output=wl.output,
            delivered=np.frombuffer(self.delivered, dtype=np.int64),
            cached=np.frombuffer(self.cached, dtype=np.int64),
            prefilled=np.frombuffer(self.prefilled, dtype=np.int64),
            energy_j=np.frombuffer(self.energy_j),
            energy_usd=np.frombuffer(self.energy_usd),
            attempts=np.frombuffer(self.attempts, dtype=np.int64),
            reasons=dict(self.reasons), site_busy_s=np.array(self.site_busy),
            site_slots=np.array(slots), site_tokens=np.array(self.site_tokens, dtype=float),
            site_ids=[s.site_id for s in fleet.sites], counters=dict(self.counters),
            explanations=list(self.explanations), idle_energy_usd=idle_usd, end_s=self.end_s,
        )
