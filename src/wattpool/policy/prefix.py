"""Which prompt prefixes each instance probably has cached, in bounded memory.

A prompt is cut into fixed-size blocks; block ``k``'s hash covers blocks ``0..k`` (chained),
so two prompts share block ``k``'s hash exactly when they share their first ``k + 1``
blocks. The router cannot see an engine's cache; like SGLang's router it remembers what
it sent where, one LRU of block hashes per instance, capped at that instance's capacity.

Invariant that keeps lookups O(log blocks): each instance's set is *prefix-closed* (if it
holds block ``k`` it holds every earlier block of that chain). ``record`` touches a chain
from its last block to its first, so earlier blocks are always more recent than later
ones, and LRU eviction removes the deepest blocks first.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from itertools import islice
from typing import Protocol

DEFAULT_BLOCK_TOKENS = 64


def chain_hashes(tokens: Sequence[int], block: int = DEFAULT_BLOCK_TOKENS) -> list[int]:
    """64-bit chained hashes of each full ``block`` of token ids (a partial tail is not
    cached by engines, so it is not hashed). Stable across processes (blake2b)."""
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    out: list[int] = []
    prev = b"\0" * 8
    for start in range(0, len(tokens) - block + 1, block):
        chunk = b"".join(int(t).to_bytes(4, "little", signed=False)
                         for t in tokens[start:start + block])
        prev = hashlib.blake2b(prev + chunk, digest_size=8).digest()
        out.append(int.from_bytes(prev, "little"))
    return out


def text_block_hashes(text: str, block_chars: int = 256) -> list[int]:
    """Chained hashes over characters, for a gateway that routes before tokenizing."""
    if block_chars < 1:
        raise ValueError(f"block_chars must be >= 1, got {block_chars}")
    data = text.encode("utf-8")
    out: list[int] = []
    prev = b"\0" * 8
    for start in range(0, len(data) - block_chars + 1, block_chars):
        prev = hashlib.blake2b(prev + data[start:start + block_chars], digest_size=8).digest()
        out.append(int.from_bytes(prev, "little"))
    return out


class PrefixView(Protocol):
    """What a policy reads (and, owning it, writes): ``PrefixIndex`` or any structure
    answering the same questions (the simulator's ``SegmentCache``)."""

    def record(self, instance: str, hashes: Sequence[int]) -> int: ...

    def depth(self, instance: str, hashes: Sequence[int]) -> int: ...

    def matches(self, hashes: Sequence[int], limit: int = 8) -> list[tuple[str, int]]: ...

    def forget(self, instance: str) -> None: ...

    def blocks(self, instance: str) -> int: ...


class PrefixIndex:
    """Per-instance LRU of block hashes, with a reverse index block -> holders.

    ``capacity`` is the default number of blocks remembered per instance; memory is
    bounded by the sum of capacities. Keys are instance ids (any hashable).
    """

    __slots__ = ("_cap", "_holders", "_lru", "capacity", "track_holders")

    def __init__(self, capacity: int, *, track_holders: bool = True) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 block, got {capacity}")
        self.capacity = capacity
        self.track_holders = track_holders
        self._lru: dict[Hashable, OrderedDict[int, None]] = {}
        self._cap: dict[Hashable, int] = {}
        # block hash -> holders, in insertion order (a dict, so iteration is deterministic)
        self._holders: dict[int, dict[Hashable, None]] = {}

    def set_capacity(self, instance: Hashable, blocks: int) -> None:
        """A per-instance cap (e.g. from its KV size); evicts at once if now over it."""
        self._cap[instance] = max(1, blocks)
        lru = self._lru.get(instance)
        if lru is not None:
            self._evict(instance, lru, self._cap[instance])

    def record(self, instance: Hashable, hashes: Sequence[int]) -> int:
        """The instance now holds this chain. Returns how many blocks were new."""
        if not hashes:
            return 0
        lru = self._lru.get(instance)
        if lru is None:
            lru = self._lru[instance] = OrderedDict()
        holders = self._holders if self.track_holders else None
        new = 0
        for h in reversed(hashes):
            if h in lru:
                lru.move_to_end(h)
            else:
                lru[h] = None
                new += 1
                if holders is not None:
                    held = holders.get(h)
                    if held is None:
                        holders[h] = {instance: None}
                    else:
                        held[instance] = None
        self._evict(instance, lru, self._cap.get(instance, self.capacity))
        return new

    def _evict(self, instance: Hashable, lru: OrderedDict[int, None], cap: int) -> None:
        holders = self._holders if self.track_holders else None
        while len(lru) > cap:
            old, _ = lru.popitem(last=False)
            if holders is not None:
                held = holders[old]
                del held[instance]
                if not held:
                    del holders[old]

    def depth(self, instance: Hashable, hashes: Sequence[int]) -> int:
        """How many leading blocks of ``hashes`` the instance holds (binary search)."""
        lru = self._lru.get(instance)
        if not lru or not hashes:
            return 0
        lo, hi = 0, len(hashes)  # invariant: first lo held; first hi+1 not all held
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if hashes[mid - 1] in lru:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def deepest(self, hashes: Sequence[int], limit: int = 8) -> tuple[int, list[Hashable]]:
        """The longest prefix any instance holds, and up to ``limit`` of its holders (most
        recent first). Needs ``track_holders``."""
        if not self.track_holders:
            raise ValueError("deepest() needs an index built with track_holders=True")
        holders = self._holders
        lo, hi = 0, len(hashes)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if hashes[mid - 1] in holders:
                lo = mid
            else:
                hi = mid - 1
        if lo == 0:
            return 0, []
        return lo, list(islice(reversed(holders[hashes[lo - 1]]), limit))

    def matches(self, hashes: Sequence[int], limit: int = 8) -> list[tuple[Hashable, int]]:
        """Up to ``limit`` (instance, depth) pairs, deepest first.

        Holder sets are nested (prefix-closure): going shallower they only grow. So the
        next level that adds anybody is found by binary search, and the cost is
        O(limit x log depth), not O(depth) or O(holders).
        """
        depth, _ = self.deepest(hashes, 0)
        holders = self._holders
        out: list[tuple[Hashable, int]] = []
        seen: set[Hashable] = set()
        k = depth
        while k > 0:
            for inst in reversed(holders[hashes[k - 1]]):
                if inst not in seen:
                    seen.add(inst)
                    out.append((inst, k))
                    if len(out) >= limit:
                        return out
            # The deepest shallower level with more holders than seen so far (0: none).
            lo, hi, have = 0, k - 1, len(seen)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if len(holders[hashes[mid - 1]]) > have:
                    lo = mid
                else:
                    hi = mid - 1
            k = lo
        return out

    def forget(self, instance: Hashable) -> None:
        """The instance lost its cache (restart, failure, curtailment)."""
        lru = self._lru.pop(instance, None)
        if lru is None or not self.track_holders:
            return
        for h in lru:
            held = self._holders[h]
            del held[instance]
            if not held:
                del self._holders[h]

    def blocks(self, instance: Hashable) -> int:
        lru = self._lru.get(instance)
        return len(lru) if lru else 0

    def total_blocks(self) -> int:
        return sum(len(lru) for lru in self._lru.values())
