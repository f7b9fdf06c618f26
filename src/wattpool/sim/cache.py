"""The instances' prefix caches in the simulator, at O(1) per request.

A simulated prompt is a system prompt (shared by many conversations) followed by one
conversation's growing history, so its chain of blocks is two *segments*: ``s`` blocks
of the system prompt, then blocks ``s..n`` of the conversation. ``PromptBlocks`` is that
chain as a lazy sequence of block hashes (so ``policy.prefix.PrefixIndex`` can read it
like any chain), and ``SegmentCache`` is a ``PrefixIndex`` specialised to it: it keeps,
per instance, how deep each segment is cached, in LRU order of segments, with the same
block capacity. What a request touches costs two dictionary updates instead of one per
block, which is what lets 10,000 sites run in minutes.

Eviction drops the least recently used *segment* whole (a block index evicts block by
block); a conversation segment is touched before its system segment, so the system
prompt outlives the conversations that use it, as with the block index.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

SYS_TAG = 1 << 60  # block hash spaces: system prompts, then conversations
CONV_TAG = 2 << 60
INDEX_BITS = 20


class PromptBlocks(Sequence[int]):
    """The block hashes of one simulated prompt, computed on demand."""

    __slots__ = ("conv", "n", "s", "sys_id")

    def __init__(self, prompt: int, sys_id: int, sys_len: int, conv: int, block: int) -> None:
        self.n = prompt // block  # full blocks
        self.s = min(sys_len // block, self.n) if sys_id >= 0 else 0  # system blocks
        self.sys_id = sys_id
        self.conv = conv

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, k: int) -> int: ...

    @overload
    def __getitem__(self, k: slice) -> list[int]: ...

    def __getitem__(self, k: int | slice) -> int | list[int]:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(self.n))]
        if k < 0:
            k += self.n
        if not 0 <= k < self.n:
            raise IndexError(k)
        if k < self.s:
            return SYS_TAG + (self.sys_id << INDEX_BITS) + k
        return CONV_TAG + (self.conv << INDEX_BITS) + k

    def __iter__(self) -> Iterator[int]:
        return (self[k] for k in range(self.n))

    def __reversed__(self) -> Iterator[int]:
        return (self[k] for k in range(self.n - 1, -1, -1))


class SegmentCache:
    """Per-instance LRU of (segment -> cached depth), bounded in blocks."""

    __slots__ = ("_cap", "_holders", "_lru", "_size", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity  # default blocks per instance
        self._cap: dict[str, int] = {}
        self._lru: dict[str, dict[int, tuple[int, int]]] = {}  # key -> (depth, base)
        self._size: dict[str, int] = {}
        self._holders: dict[int, dict[str, None]] = {}  # segment key -> instances

    def set_capacity(self, instance: str, blocks: int) -> None:
        self._cap[instance] = max(1, blocks)

    def _touch(self, instance: str, lru: dict[int, tuple[int, int]], key: int,
               depth: int, base: int) -> int:
        old = lru.pop(key, None)
        if old is None:
            lru[key] = (depth, base)
            held = self._holders.get(key)
            if held is None:
                self._holders[key] = {instance: None}
            else:
                held[instance] = None
            return depth - base
        kept = old[0] if old[0] > depth else depth
        lru[key] = (kept, base)
        return kept - old[0]

    def record(self, instance: str, blocks: PromptBlocks) -> int:
        lru = self._lru.get(instance)
        if lru is None:
            lru = self._lru[instance] = {}
            self._size[instance] = 0
        new = 0
        if blocks.n > blocks.s:  # the conversation first, so the system prompt is newer
            new += self._touch(instance, lru, CONV_TAG + blocks.conv, blocks.n, blocks.s)
        if blocks.s:
            new += self._touch(instance, lru, SYS_TAG + blocks.sys_id, blocks.s, 0)
        size = self._size[instance] + new
        cap = self._cap.get(instance, self.capacity)
        while size > cap and lru:
            key = next(iter(lru))  # the least recently used (dicts keep insertion order)
            depth, base = lru.pop(key)
            size -= depth - base
            held = self._holders[key]
            del held[instance]
            if not held:
                del self._holders[key]
        self._size[instance] = size
        return new

    def depth_then_record(self, instance: str, blocks: PromptBlocks) -> int:
        """``depth`` before the prompt is cached, then ``record`` it: what an instance
        does when a request starts (one call on the simulator's hot path)."""
        lru = self._lru.get(instance)
        if lru is None:
            lru = self._lru[instance] = {}
            self._size[instance] = 0
        n, s = blocks.n, blocks.s
        skey = SYS_TAG + blocks.sys_id
        ckey = CONV_TAG + blocks.conv
        # The depth (as ``depth``), read before this prompt is recorded.
        got = lru.get(skey) if s else None
        sys_old = got[0] if got else 0
        conv = lru.get(ckey) if n > s else None
        if s and sys_old < s:
            found = sys_old
        elif conv is not None:
            found = conv[0] if conv[0] < n else n
        else:
            found = s
        # Then ``record``: the conversation first, so the system prompt is newer.
        new = 0
        if n > s:
            if conv is None:
                lru[ckey] = (n, s)
                self._hold(ckey, instance)
                new += n - s
            else:
                del lru[ckey]
                kept = conv[0] if conv[0] > n else n
                lru[ckey] = (kept, s)
                new += kept - conv[0]
        if s:
            if got is None:
                lru[skey] = (s, 0)
                self._hold(skey, instance)
                new += s
            else:
                del lru[skey]
                kept = sys_old if sys_old > s else s
                lru[skey] = (kept, 0)
                new += kept - sys_old
        if new:
            self._evict(instance, lru, self._size[instance] + new)
        return found

    def _hold(self, key: int, instance: str) -> None:
        held = self._holders.get(key)
        if held is None:
            self._holders[key] = {instance: None}
        else:
            held[instance] = None

    def _evict(self, instance: str, lru: dict[int, tuple[int, int]], size: int) -> None:
        cap = self._cap.get(instance, self.capacity)
        while size > cap and lru:
            key = next(iter(lru))  # the least recently used (dicts keep insertion order)
            depth, base = lru.pop(key)
            size -= depth - base
            held = self._holders[key]
            del held[instance]
            if not held:
                del self._holders[key]
        self._size[instance] = size

    def depth(self, instance: str, blocks: PromptBlocks) -> int:
        lru = self._lru.get(instance)
        if not lru:
            return 0
        s = blocks.s
        if s:
            got = lru.get(SYS_TAG + blocks.sys_id)
            have = got[0] if got else 0
            if have < s:
                return have
        if blocks.n > s:
            got = lru.get(CONV_TAG + blocks.conv)
            if got:
                return got[0] if got[0] < blocks.n else blocks.n
        return s

    def matches(self, blocks: PromptBlocks, limit: int = 8) -> list[tuple[str, int]]:
        """Up to ``limit`` (instance, depth), deepest first: the conversation's holders,
        then the system prompt's (most recent first). ``depth`` is inlined: this runs on
        every routing decision."""
        n, s = blocks.n, blocks.s
        lrus = self._lru
        skey = SYS_TAG + blocks.sys_id
        out: list[tuple[str, int]] = []
        seen: set[str] = set()
        if n > s:
            ckey = CONV_TAG + blocks.conv
            for inst in reversed(self._holders.get(ckey, ())):
                lru = lrus[inst]  # a holder always has its LRU
                if s:
                    got = lru.get(skey)
                    have = got[0] if got else 0
                    if have < s:
                        if have:
                            out.append((inst, have))
                            seen.add(inst)
                        continue
                d = lru[ckey][0]
                out.append((inst, d if d < n else n))
                seen.add(inst)
            if len(out) > 1:
                out.sort(key=lambda pair: -pair[1])
                del out[limit:]
        if s and len(out) < limit:
            ckey = CONV_TAG + blocks.conv
            for inst in reversed(self._holders.get(skey, ())):
                if inst in seen:
                    continue
                lru = lrus[inst]
                have = lru[skey][0]
                if have >= s and n > s:
                    got = lru.get(ckey)
                    d = (got[0] if got[0] < n else n) if got else s
                else:
                    d = have if have < s else s
                if d:
                    out.append((inst, d))
                    if len(out) >= limit:
                        break
        return out

    def forget(self, instance: str) -> None:
        lru = self._lru.pop(instance, None)
        self._size.pop(instance, None)
        for key in lru or ():
            held = self._holders[key]
            del held[instance]
            if not held:
                del self._holders[key]

    def blocks(self, instance: str) -> int:
        return self._size.get(instance, 0)
