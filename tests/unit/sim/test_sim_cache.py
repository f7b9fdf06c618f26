"""wattpool.sim.cache: the segment cache answers as the block index would."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from wattpool.policy.prefix import PrefixIndex
from wattpool.sim.cache import PromptBlocks, SegmentCache

prompts = st.tuples(st.integers(0, 3000), st.integers(-1, 3), st.integers(0, 1000),
                    st.integers(0, 5))


def blocks(p: tuple[int, int, int, int]) -> PromptBlocks:
    prompt, sys_id, sys_len, conv = p
    # A conversation always has the same system prompt: derive it from the conversation.
    sys_id = conv % 4 - 1
    sys_len = 200 * (conv % 3) + 100
    return PromptBlocks(prompt, sys_id, sys_len, conv, 128)


def test_prompt_blocks_are_a_chain() -> None:
    b = PromptBlocks(1000, 7, 300, 42, 128)
    assert len(b) == 7 and b.s == 2
    assert list(b) == [b[k] for k in range(7)] and list(reversed(b)) == list(b)[::-1]
    assert b[0] == PromptBlocks(600, 7, 300, 99, 128)[0]  # same system prompt block
    assert b[2] != PromptBlocks(600, 7, 300, 99, 128)[2]  # different conversations
    assert b[-1] == b[6] and b[1:3] == [b[1], b[2]]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), prompts), min_size=1, max_size=40))
def test_without_eviction_depths_equal_the_block_index(ops: list[tuple[int, tuple[int, int,
                                                                                    int,
                                                                                    int]]]
                                                        ) -> None:
    seg, idx = SegmentCache(10**6), PrefixIndex(10**6)
    for inst, p in ops:
        seg.record(f"i{inst}", blocks(p))
        idx.record(f"i{inst}", blocks(p))
    for _, p in ops:
        b = blocks(p)
        for inst in ("i0", "i1", "i2"):
            assert seg.depth(inst, b) == idx.depth(inst, b)
        assert {i for i, _ in seg.matches(b, 8)} <= {f"i{k}" for k in range(3)}
        if idx.matches(b, 8):
            assert max(d for _, d in seg.matches(b, 8)) == idx.matches(b, 8)[0][1]


@settings(max_examples=100, deadline=None)
@given(st.lists(prompts, min_size=1, max_size=60), st.integers(1, 40))
def test_capacity_bounds_the_blocks_held(ps: list[tuple[int, int, int, int]], cap: int) -> None:
    seg = SegmentCache(cap)
    for p in ps:
        seg.record("i", blocks(p))
        assert seg.blocks("i") <= cap or len(seg._lru["i"]) == 0
    seg.forget("i")
    assert seg.blocks("i") == 0 and seg.matches(blocks(ps[0])) == []


def test_the_system_prompt_outlives_its_conversations() -> None:
    seg = SegmentCache(capacity=12)
    a = PromptBlocks(10 * 128, 1, 4 * 128, 100, 128)  # 4 system + 6 conversation blocks
    b = PromptBlocks(8 * 128, 2, 4 * 128, 200, 128)  # another system prompt
    seg.record("i", a)
    seg.record("i", b)  # 20 blocks > 12: a's conversation goes first
    assert seg.depth("i", a) == 4
    assert seg.depth("i", b) == 8
