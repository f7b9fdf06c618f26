"""The simulated requests: Azure arrivals, sampled lengths, and shared prefixes.

Arrival *times* come from the Azure 2023 trace (chat and code services), scaled to the
requested rate by superposing randomly shifted copies of the hour (and thinning the last
copy), so the trace's burstiness survives the scaling.

No public trace says which prompts share a prefix, so chat requests get a structure of
our own (docs/simulator.md, "Shared prefixes"):
- conversations of 1 + Geometric turns (mean ``mean_turns``), each starting with one of
  ``system_prompts`` system prompts drawn by Zipf popularity;
- turn ``t``'s prompt is the system prompt, all earlier turns (user text and answers) and
  the new user text, so each turn extends the previous one;
- user text is ``user_share`` of a prompt length drawn from the ShareGPT samples, the
  answer is that sample's output length; prompts are capped at the context length;
- conversations' turns are laid out in time (start uniform, exponential think times) and
  matched by rank to the trace's arrival times, which keeps the trace's arrival process.
Code requests take the code trace's own lengths and share nothing.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from wattpool.sim.data import DataSet, Trace


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    rate: float  # requests per second, chat and code together
    duration_s: float = 3600.0
    code_share: float = 0.31  # of requests (the Azure trace's code:conv ratio)
    shared: bool = True  # chat prompts share system prompts and conversation history
    system_prompts: int = 200
    zipf: float = 1.1  # popularity of system prompts
    system_tokens: tuple[int, int] = (200, 2000)  # uniform range of system prompt lengths
    mean_turns: float = 3.0
    think_s: float = 60.0  # mean pause between a conversation's turns
    user_share: float = 0.3  # user text per turn, as a share of a sampled prompt length
    context: int = 8192  # prompt + output tokens at most
    gateways: tuple[float, ...] = (1.0,)  # demand weight per gateway region


@dataclass(frozen=True, slots=True)
class Workload:
    """One row per request, sorted by arrival time."""

    t: np.ndarray  # arrival, seconds from the start
    prompt: np.ndarray  # prompt tokens
    output: np.ndarray  # output tokens to generate
    sys_id: np.ndarray  # system prompt, -1 for none
    sys_len: np.ndarray  # its tokens
    conv: np.ndarray  # conversation id (unique per request when nothing is shared)
    turn: np.ndarray  # 0 for a conversation's first request
    gateway: np.ndarray  # index of the gateway region the request enters through
    code: np.ndarray  # True for code-completion requests

    @property
    def n(self) -> int:
        return len(self.t)


def scaled_arrivals(trace: Trace, rate: float, duration_s: float,
                    rng: np.random.Generator) -> np.ndarray:
    """Arrival times at ``rate`` per second over ``duration_s``, from shifted copies of
    the trace (each copy wraps around the trace's span)."""
    span = max(trace.duration_s, 1.0)
    base = trace.t - trace.t[0]
    copies = rate * span / len(base) if len(base) else 0.0
    # Whole copies, then a thinned one; tiles of the span cover a longer duration.
    tiles = int(np.ceil(duration_s / span))
    chunks: list[np.ndarray] = []
    for tile in range(tiles):
        whole = int(copies)
        for _ in range(whole):
            chunks.append((base + rng.uniform(0, span)) % span + tile * span)
        frac = copies - whole
        if frac > 0:
            keep = rng.random(len(base)) < frac
            chunks.append((base[keep] + rng.uniform(0, span)) % span + tile * span)
    t = np.sort(np.concatenate(chunks)) if chunks else np.zeros(0)
    return t[t < duration_s]


def _chat(cfg: WorkloadConfig, t: np.ndarray, lengths: tuple[np.ndarray, np.ndarray],
          rng: np.random.Generator, first_conv: int) -> dict[str, np.ndarray]:
    n = len(t)
    sample_prompt, sample_output = lengths
    pick = rng.integers(0, len(sample_prompt), size=n)
    user = np.maximum(8, (sample_prompt[pick] * cfg.user_share).astype(np.int64))
    out = np.maximum(1, sample_output[pick].astype(np.int64))
    if not cfg.shared:
        prompt = np.minimum(sample_prompt[pick].astype(np.int64), cfg.context - out)
        return {"prompt": np.maximum(prompt, 1), "output": out,
                "sys_id": np.full(n, -1), "sys_len": np.zeros(n, np.int64),
                "conv": first_conv + np.arange(n), "turn": np.zeros(n, np.int64)}
    # Conversations and their turns, laid out in time, then matched to arrivals by rank.
    convs = int(n / cfg.mean_turns * 1.2) + 16  # a margin, then top up if still short
    turns = rng.geometric(1.0 / cfg.mean_turns, size=convs)
    short = n - int(turns.sum())
    if short > 0:  # one-turn conversations fill the gap
        turns = np.concatenate([turns, np.ones(short, dtype=turns.dtype)])
        convs += short
    conv_of = np.repeat(np.arange(convs), turns)
    turn_of = np.arange(len(conv_of)) - np.repeat(np.cumsum(turns) - turns, turns)
    start = rng.uniform(0, max(float(t[-1]) if n else 1.0, 1.0), size=convs)
    gaps = rng.exponential(cfg.think_s, size=len(conv_of)) * (turn_of > 0)
    first = np.cumsum(turns) - turns
    cum = np.cumsum(gaps)
    when = start[conv_of] + cum - np.repeat(cum[first] - gaps[first], turns)
    order = np.argsort(when, kind="stable")[:n]
    # Grouped by conversation in turn order: conv_of and turn_of rise together with the
    # index (np.repeat above), so that order is the indices' own: a plain sort of
    # distinct integers, not an argsort of a composite key (seconds at 20 M requests).
    order = np.sort(order)
    # ``order`` is now the n chosen turns grouped by conversation in turn order; the
    # arrival times go to them by time rank.
    rank_time = np.empty(n)
    rank_time[np.argsort(when[order], kind="stable")] = t
    conv = conv_of[order]
    turn = turn_of[order]
    # Prompt of turn k = system + sum over earlier turns (user + answer) + own user text.
    popularity = 1.0 / np.arange(1, cfg.system_prompts + 1) ** cfg.zipf
    sys_of_conv = rng.choice(cfg.system_prompts, size=convs, p=popularity / popularity.sum())
    lo, hi = cfg.system_tokens
    sys_len_of = rng.integers(lo, hi + 1, size=cfg.system_prompts)
    step = user + out
    cum_step = np.cumsum(step)
    starts = np.r_[0, np.flatnonzero(np.diff(conv)) + 1]
    group_first = np.repeat(starts, np.diff(np.r_[starts, n]))
    before = cum_step - step - (cum_step[group_first] - step[group_first])
    sys_id = sys_of_conv[conv]
    sys_len = sys_len_of[sys_id]
    prompt = np.minimum(sys_len + before + user, cfg.context - out)
    return {"prompt": np.maximum(prompt, 1), "output": out, "sys_id": sys_id,
            "sys_len": sys_len, "conv": first_conv + conv, "turn": turn,
            "t": rank_time}


def build_workload(data: DataSet, cfg: WorkloadConfig, seed: int = 0) -> Workload:
    rng = np.random.default_rng(seed)
    code_rate = cfg.rate * cfg.code_share
    t_chat = scaled_arrivals(data.chat, cfg.rate - code_rate, cfg.duration_s, rng)
    t_code = scaled_arrivals(data.code, code_rate, cfg.duration_s, rng)
    chat = _chat(cfg, t_chat, data.lengths, rng, 0)
    chat_t = chat.pop("t", t_chat)
    nc = len(t_code)
    pick = rng.integers(0, len(data.code.prompt), size=nc)
    code_out = np.maximum(1, data.code.output[pick].astype(np.int64))
    code_prompt = np.maximum(1, np.minimum(data.code.prompt[pick].astype(np.int64),
                                           cfg.context - code_out))
    first_code_conv = int(chat["conv"].max()) + 1 if len(chat_t) else 0
    cols = {
        "t": np.concatenate([chat_t, t_code]),
        "prompt": np.concatenate([chat["prompt"], code_prompt]),
        "output": np.concatenate([chat["output"], code_out]),
        "sys_id": np.concatenate([chat["sys_id"], np.full(nc, -1)]),
        "sys_len": np.concatenate([chat["sys_len"], np.zeros(nc, np.int64)]),
        "conv": np.concatenate([chat["conv"], first_code_conv + np.arange(nc)]),
        "turn": np.concatenate([chat["turn"], np.zeros(nc, np.int64)]),
        "code": np.concatenate([np.zeros(len(chat_t), bool), np.ones(nc, bool)]),
    }
    # A conversation keeps the gateway of its region; code requests draw their own.
    weights = np.asarray(cfg.gateways, dtype=float)
    weights = weights / weights.sum()
    conv_gateway = rng.choice(len(weights), size=int(cols["conv"].max()) + 1 if len(
        cols["conv"]) else 1, p=weights)
    cols["gateway"] = conv_gateway[cols["conv"]]
    order = np.argsort(cols["t"], kind="stable")
    # Ten random gathers of up to tens of millions of rows are most of a large set-up;
    # numpy releases the GIL while it gathers, so two threads share the work.
    with ThreadPoolExecutor(max_workers=2) as pool:
        ordered = dict(zip(cols, pool.map(lambda v: v.take(order), cols.values()),
                           strict=True))
    return Workload(**ordered)
