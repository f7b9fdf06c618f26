"""wattpool.sim.workload: scaled arrivals and the shared-prefix generator."""

from __future__ import annotations

import numpy as np

from wattpool.policy.prefix import PrefixIndex
from wattpool.sim import data
from wattpool.sim.cache import PromptBlocks
from wattpool.sim.workload import WorkloadConfig, build_workload, scaled_arrivals


def test_arrivals_scale_to_the_asked_rate_and_stay_sorted() -> None:
    trace = data.load().chat
    rng = np.random.default_rng(0)
    for rate in (0.5, 20.0, 300.0):
        t = scaled_arrivals(trace, rate, 3600.0, rng)
        assert np.all(np.diff(t) >= 0) and t.min() >= 0 and t.max() < 3600
        assert abs(len(t) / 3600.0 - rate) / rate < 0.1


def test_workload_mixes_code_and_chat_and_is_reproducible() -> None:
    ds = data.load()
    cfg = WorkloadConfig(rate=30.0, duration_s=900.0)
    a, b = build_workload(ds, cfg, seed=4), build_workload(ds, cfg, seed=4)
    assert a.n == b.n and np.array_equal(a.prompt, b.prompt) and np.array_equal(a.t, b.t)
    assert 0.25 < a.code.mean() < 0.37
    assert np.all(np.diff(a.t) >= 0)
    assert np.all(a.prompt + a.output <= cfg.context)
    assert np.all(a.sys_id[a.code] == -1)  # code shares nothing
    assert (a.turn > 0).mean() > 0.2  # many chat requests are follow-up turns


def test_each_turn_extends_the_conversation_so_far() -> None:
    wl = build_workload(data.load(), WorkloadConfig(rate=20.0, duration_s=1800.0), seed=2)
    chat = ~wl.code
    for conv in np.unique(wl.conv[chat & (wl.turn >= 2)])[:50]:
        rows = np.flatnonzero(wl.conv == conv)
        rows = rows[np.argsort(wl.turn[rows])]
        assert np.all(np.diff(wl.t[rows]) >= 0)  # turns come in order
        assert len(set(wl.sys_id[rows])) == 1 and len(set(wl.gateway[rows])) == 1
        prompts = wl.prompt[rows]
        uncapped = prompts + wl.output[rows] < 8192
        assert np.all(np.diff(prompts)[uncapped[1:]] > 0)  # history only grows


def test_prompts_sharing_a_system_prompt_share_its_blocks() -> None:
    wl = build_workload(data.load(), WorkloadConfig(rate=20.0, duration_s=600.0), seed=3)
    index = PrefixIndex(capacity=10**6)
    chat = np.flatnonzero(~wl.code)
    a, b = (int(i) for i in chat[:2])
    for r in (a, b):
        index.record(f"r{r}", PromptBlocks(int(wl.prompt[r]), int(wl.sys_id[r]),
                                           int(wl.sys_len[r]), int(wl.conv[r]), 128))
    same = wl.sys_id[a] == wl.sys_id[b] and wl.conv[a] != wl.conv[b]
    blocks_b = PromptBlocks(int(wl.prompt[b]), int(wl.sys_id[b]), int(wl.sys_len[b]),
                            int(wl.conv[b]), 128)
    if same:
        assert index.depth(f"r{a}", blocks_b) == blocks_b.s
    assert index.depth(f"r{b}", blocks_b) == len(blocks_b)


def test_a_plain_workload_shares_nothing() -> None:
    wl = build_workload(data.load(), WorkloadConfig(rate=10.0, duration_s=300.0, shared=False),
                        seed=1)
    assert np.all(wl.sys_id == -1)
    assert len(np.unique(wl.conv)) == wl.n
