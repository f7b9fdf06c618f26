"""wattpool.policy.prefix: chained block hashes and the bounded prefix index."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from wattpool.policy.prefix import PrefixIndex, chain_hashes, text_block_hashes


def test_chain_hashes_cover_full_blocks_only_and_are_stable() -> None:
    tokens = list(range(10))
    hashes = chain_hashes(tokens, block=4)
    assert len(hashes) == 2  # the 2-token tail is not cached by engines, so not hashed
    assert hashes == chain_hashes(tokens, block=4)  # same input, same hashes
    assert chain_hashes([1, 2], block=2)[0] == chain_hashes([1, 2, 3], block=2)[0]
    # Fixed values guard the scheme: gateways and nodes must agree across versions.
    assert chain_hashes([1, 2, 3, 4], block=2) == [18389742664249816232, 11220972698411055348]


def test_chain_hashes_depend_on_everything_before() -> None:
    a = chain_hashes([1, 2, 3, 4, 5, 6], block=2)
    b = chain_hashes([9, 2, 3, 4, 5, 6], block=2)
    assert a[1:] != b[1:] and a[0] != b[0]  # same later blocks, different history
    c = chain_hashes([1, 2, 3, 4, 7, 7], block=2)
    assert a[:2] == c[:2] and a[2] != c[2]


def test_text_block_hashes_share_a_common_system_prompt() -> None:
    system = "You are a helpful assistant. " * 20
    a = text_block_hashes(system + "What is the capital of France?", block_chars=64)
    b = text_block_hashes(system + "Write a haiku about GPUs, please.", block_chars=64)
    shared = len(system.encode()) // 64
    assert a[:shared] == b[:shared]


def test_depth_counts_leading_blocks_held() -> None:
    index = PrefixIndex(capacity=100)
    index.record("i1", [1, 2, 3])
    assert index.depth("i1", [1, 2, 3, 4]) == 3
    assert index.depth("i1", [1, 2, 9]) == 2
    assert index.depth("i1", [7, 8]) == 0
    assert index.depth("nobody", [1, 2]) == 0


def test_matches_lists_deepest_holders_first_and_respects_the_limit() -> None:
    index = PrefixIndex(capacity=100)
    index.record("shallow", [1, 2])
    index.record("deep", [1, 2, 3, 4])
    index.record("other", [7, 8])
    assert index.matches([1, 2, 3, 4, 5]) == [("deep", 4), ("shallow", 2)]
    assert index.matches([1, 2, 3, 4], limit=1) == [("deep", 4)]
    assert index.matches([20, 21]) == []


def test_lru_evicts_deepest_blocks_first_and_keeps_memory_bounded() -> None:
    index = PrefixIndex(capacity=4)
    index.record("i", [1, 2, 3])
    index.record("i", [10, 11, 12])  # 6 blocks: the oldest chain loses its tail first
    assert index.blocks("i") == 4
    assert index.depth("i", [10, 11, 12]) == 3
    assert index.depth("i", [1, 2, 3]) == 1
    assert index.total_blocks() == 4


def test_forget_drops_an_instance_everywhere() -> None:
    index = PrefixIndex(capacity=10)
    index.record("a", [1, 2])
    index.record("b", [1, 2])
    index.forget("a")
    assert index.matches([1, 2]) == [("b", 2)]
    index.forget("b")
    assert index.deepest([1, 2]) == (0, [])
    index.forget("never-seen")


def test_per_instance_capacity_evicts_at_once() -> None:
    index = PrefixIndex(capacity=10)
    index.record("a", [1, 2, 3, 4])
    index.set_capacity("a", 2)
    assert index.blocks("a") == 2
    assert index.depth("a", [1, 2, 3, 4]) == 2


chains = st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=6), min_size=1, max_size=30)


def _chain(path: list[int]) -> list[int]:
    """Hashes of a chain: each block's hash names the whole path up to it."""
    return [hash(tuple(path[:k + 1])) for k in range(len(path))]


@settings(max_examples=150, deadline=None)
@given(chains, st.integers(1, 12))
def test_every_instance_set_stays_prefix_closed(paths: list[list[int]], cap: int) -> None:
    """Whatever is recorded and evicted, a held block implies its whole prefix is held,
    and depth() (a binary search) equals a linear count."""
    index = PrefixIndex(capacity=cap)
    for k, path in enumerate(paths):
        index.record(f"i{k % 3}", _chain(path))
        assert index.total_blocks() <= 3 * cap
    for path in paths:
        hashes = _chain(path)
        for inst in ("i0", "i1", "i2"):
            held = [index.depth(inst, [h]) == 1 for h in hashes]
            for k, here in enumerate(held):
                assert not here or all(held[:k]), "a block is held without its prefix"
            leading = next((k for k, here in enumerate(held) if not here), len(held))
            assert index.depth(inst, hashes) == leading
        deepest, holders = index.deepest(hashes, limit=3)
        assert all(index.depth(i, hashes) == deepest for i in holders)
