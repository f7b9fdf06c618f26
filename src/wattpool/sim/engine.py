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
    N_FIELDS,
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
PROGRESS_STEPS = 20000  # loop steps between progress reports
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
        # The table's rows as one flat run of doubles (row i's field f at i * N_FIELDS + f):
        # the same memory the policy reads, written at a tenth of numpy's cost per item.
        self._mv = memoryview(table.data).cast("B").cast("d")
        self.rtt_rows: list[list[float]] = table.rtt.tolist()  # fixed for the run
        self.ids = table.ids
        self.block = cfg.block_tokens
        self.model = cfg.model
        self.max_attempts = cfg.max_attempts
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
        arrive, finish, handle = self._dispatch, self._finish, self._handle
        no_exclusion: frozenset[str] = frozenset()
        countdown = PROGRESS_STEPS
        now = 0.0
        clock = self._clock
        # Bounded: each arrival is taken once; each event was pushed by an arrival (at
        # most max_attempts finishes each) or scheduled up front (faults, hours). The
        # branches are inlined: this loop runs tens of millions of times.
        while True:
            if nxt < n and (not events or t_arr[nxt] <= events[0][0]):
                now = t_arr[nxt]
                if clock is not None:
                    clock.now = now
                arrive(nxt, now, no_exclusion)
                nxt += 1
            elif events:
                now, _, kind, a, b = pop(events)
                if clock is not None:
                    clock.now = now
                if kind == FINISH:
                    finish(a, b, now)
                else:
                    handle(kind, a, b, now)
            else:
                break
            countdown -= 1
            if not countdown:
                countdown = PROGRESS_STEPS
                if progress is not None:
                    progress(min(1.0, nxt / max(n, 1)))
        if progress is not None:
            progress(1.0)
        # The run ends when its last stream does (not at the last fault or recovery event,
        # which may lie far beyond: utilisation and idle energy are per second of this).
        finished = np.frombuffer(self.finish_t)
        finished = finished[~np.isnan(finished)]
        self.end_s = max(float(finished.max()) if len(finished) else 0.0, self.duration)
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
        self.decisions = 0
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
    # The hot path: every request passes here once or more, tens of millions of times in a
    # large run, so attribute look-ups are hoisted into locals, the instance's table row
    # is written through a flat memoryview (``_mv``, 20 ns a store where numpy's
    # ``m[FIELD, row] = x`` costs 170), and what an arrival needs is computed once.

    def _dispatch(self, r: int, now: float, exclude: frozenset[str]) -> None:
        cfg, table = self.cfg, self.table
        prompt = self.cur_prompt[r]
        remaining = self.remaining[r]
        gateway = self.gateway[r]
        hashes = PromptBlocks(prompt, self.sys_id[r], self.sys_len[r], self.conv[r],
                              self.block)
        req = RequestSpec(self.model, prompt, remaining, hashes, gateway, exclude)
        attempts, max_attempts = self.attempts, self.max_attempts
        choose = self.policy.choose
        for _ in range(max_attempts):  # bounded retries of flaky sites
            if attempts[r] >= max_attempts:
                self._reject(r, now, f"failed on {attempts[r]} instances")
                return
            # A few decisions are taken explained (the same decision, with its report).
            telling = r in self.explain_at and len(self.explanations) < cfg.explain_samples
            d = choose(req, table, self.rng, explain=telling)
            if telling:
                self.explanations.append(explain(d))
            self.decisions += 1
            if d.chosen is None:
                self._reject(r, now, d.reason)
                return
            i = d.row
            self.policy.observe(req, table, i)
            attempts[r] += 1
            flaky = self.flaky[i]
            if flaky:
                if self.fault_rng.random() < flaky:
                    self.counters["errors"] += 1
                    self._outcome(i, 1.0, now)
                    req = RequestSpec(self.model, prompt, remaining, hashes, gateway,
                                      req.exclude | {table.ids[i]})
                    continue
                self._outcome(i, 0.0, now)
            # Admission: start now if a slot and the KV are free, else wait in the queue.
            self.inst_of[r] = i
            self.att[r] += 1
            if (self.busy[i] < self.max_batch[i]
                    and self.kv[i] + prompt + remaining <= self.kv_cap[i]):
                self._start(i, r, now, hashes)
            else:
                self.queue[i].append(r)
                self._report(i, now)
            return
        self._reject(r, now, f"failed on {attempts[r]} instances")

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

    def _report(self, i: int, now: float) -> None:
        """What the instance would report: running streams, and waiting ones (for a slot,
        or admitted but with their prefill not started), as engines count them; and its
        share of KV in use."""
        backlog = self.backlog[i]
        while backlog and backlog[0] <= now:
            backlog.popleft()
        base = i * N_FIELDS
        mv = self._mv
        waiting = len(backlog)
        mv[base + QUEUED] = float(len(self.queue[i]) + waiting)
        mv[base + IN_FLIGHT] = float(self.busy[i] - waiting)
        mv[base + KV_USED] = self.kv[i] / self.kv_cap[i]

    def _start(self, i: int, r: int, now: float, hashes: PromptBlocks | None = None) -> None:
        prompt = self.cur_prompt[r]
        remaining = self.remaining[r]
        block = self.block
        if hashes is None:
            hashes = PromptBlocks(prompt, self.sys_id[r], self.sys_len[r], self.conv[r], block)
        cached = self.truth.depth_then_record(self.ids[i], hashes) * block
        if cached > prompt - 1:
            cached = prompt - 1
        free = self.prefill_free[i]
        begin = now if now > free else free
        pe = begin + (prompt - cached) * self.inv_prefill[i]
        self.prefill_free[i] = pe
        b = self.busy[i] + 1
        tp = self.tpot1[i] + self.slope[i] * (b - 1)
        end = pe + (remaining - 1) * tp
        self.busy[i] = b
        kv = self.kv[i] = self.kv[i] + prompt + remaining
        backlog = self.backlog[i]
        if begin > now:
            backlog.append(begin)
        # What the instance reports (as ``_report``, inlined: once per request).
        while backlog and backlog[0] <= now:
            backlog.popleft()
        base = i * N_FIELDS
        mv = self._mv
        waiting = len(backlog)
        mv[base + QUEUED] = float(len(self.queue[i]) + waiting)
        mv[base + IN_FLIGHT] = float(b - waiting)
        mv[base + KV_USED] = kv / self.kv_cap[i]
        self.active[i][r] = None
        self.pe[r] = pe
        self.tp[r] = tp
        if self.first_token[r] != self.first_token[r]:  # nan: no first token yet
            self.first_token[r] = pe
            self.rtt_ms[r] = self.rtt_rows[self.gateway[r]][i]
        s = self.site_of[i]
        joules = self.w_prefill[i] * (pe - begin) + self.w_decode[i] * (end - pe) / b
        self.energy_j[r] += joules
        price = self.site_price[s]
        if price > 0.0:
            self.energy_usd[r] += joules * price / J_PER_MWH
        self.cached[r] += cached
        self.prefilled[r] += prompt
        self.site_busy[s] += end - begin
        self.seq += 1
        heapq.heappush(self.events, (end, self.seq, FINISH, r, self.att[r]))

    def _finish(self, r: int, att: int, now: float) -> None:
        if att != self.att[r] or self.status[r] != PENDING:
            return  # the request moved on (failure, curtailment) since this was scheduled
        i = self.inst_of[r]
        remaining = self.remaining[r]
        del self.active[i][r]
        self.busy[i] -= 1
        self.kv[i] -= self.cur_prompt[r] + remaining
        self.delivered[r] += remaining
        self.remaining[r] = 0
        self.status[r] = DONE
        self.finish_t[r] = now
        self.rtt_ms[r] = self.rtt_rows[self.gateway[r]][i]
        self.site_tokens[self.site_of[i]] += self.tokens_total[r]
        queue = self.queue[i]
        if queue:
            self._drain_queue(i, now)
        # What the instance reports (as ``_report``, inlined: once per request).
        backlog = self.backlog[i]
        while backlog and backlog[0] <= now:
            backlog.popleft()
        base = i * N_FIELDS
        mv = self._mv
        waiting = len(backlog)
        mv[base + QUEUED] = float(len(queue) + waiting)
        mv[base + IN_FLIGHT] = float(self.busy[i] - waiting)
        mv[base + KV_USED] = self.kv[i] / self.kv_cap[i]

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
            site_ids=[s.site_id for s in fleet.sites],
            counters={**self.counters, "decisions": self.decisions},
            explanations=list(self.explanations), idle_energy_usd=idle_usd, end_s=self.end_s,
        )
