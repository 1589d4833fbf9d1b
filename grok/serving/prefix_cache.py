"""The prefix cache: prompts' KV kept on the device, so a shared prompt prefix is prefilled once.

An entry is one prefilled prompt: its token ids and its `Prefix` (grok.engine.api), a device
value the engine never modifies. Position p's keys and values depend on tokens[:p + 1] alone,
so an entry serves every later prompt that starts with some of the same tokens: the scheduler
continues such a prompt from the entry's first h positions (`engine.slice_prefix`, or the
entry's Prefix itself when h is all of it) and prefills only the rest. h is at most the
prompt's length - 1: the first sampled token needs the last prompt position's logits.

Index. Prompts are cut into blocks of BLOCK_TOKENS ids; block j's key chains the previous
key with the block's ids (hash((key_{j-1}, ids))), so equal keys mean equal prompts up to
the block's end (up to a hash collision, which the exact comparison below catches). A lookup
walks the prompt's blocks to the deepest key some entry holds, then compares those entries'
ids with the prompt's exactly (NumPy) to find the longest common prefix, which may end inside
a block ("a hit that ends mid-block").

Isolation. Every lookup and insert names a namespace (`namespace_of(cache_salt)`: 0 without a
salt). It seeds the hash chain and is compared exactly, so an entry serves only prompts of its
own namespace: requests with different salts never share cached positions (so one user cannot
learn from hits, or their timing, what another's prompt began with), equal salts do.

Memory. `budget_tokens` bounds the positions held: an entry costs its Prefix's capacity (the
bucket of positions it really holds on the device, >= its length). Inserting evicts the least
recently used entries until the new one fits; an entry in use (pinned between `acquire` and
`release`: a request prefilling from it) is never evicted; when the pinned ones leave no room
the new entry is not kept. An entry whose ids are a prefix of a new entry's is dropped (unless
pinned): every hit it could give, the new one gives (an interactive conversation keeps only
its latest prompt).

Multi-process jobs. Every process runs the same scheduler on the same decisions
(grok.serving.decisions), so the calls here come in the same order everywhere; the cache's
state is a function of that order alone (a logical clock for recency, no wall time, no object
ids, and hashes of ints, which Python does not randomise), so every process finds the same hits
and makes the same `slice_prefix` device calls. `snapshot()` exposes the state to check this.

Glossary: P prefix capacity (positions held on the device).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from typing import Callable, Optional, Sequence

import numpy as np

# Ids per index block: the granularity of the hash chain. Hits are extended id by id past the
# last whole block, so this trades index size (one key per block per entry) against lookup
# steps, not hit length. 16 keeps a Grok-1 8k-token entry at 512 keys.
BLOCK_TOKENS = 16


@dataclasses.dataclass(eq=False)
class _Entry:
    entry_id: int
    ids: np.ndarray        # [n] int64: the prompt's token ids
    prefix: object         # the engine's Prefix of those ids (device value)
    cost: int              # P: positions held on the device
    keys: tuple            # the chain keys of its whole blocks
    last_used: int         # logical clock of its last insert or hit
    pins: int = 0          # requests prefilling from it now
    namespace: int = 0     # namespace_of the salt of the prompts it may serve


@dataclasses.dataclass(frozen=True)
class Hit:
    """A lookup's result: continue the prompt from `prefix` (`length` positions)."""

    entry_id: int
    length: int
    prefix: object


def namespace_of(cache_salt: Optional[str]) -> int:
    """The cache namespace of a salt: 0 for none, else a hash of it that is the same in every
    process (Python's str hash is not)."""
    if not cache_salt:
        return 0
    return int.from_bytes(hashlib.sha256(cache_salt.encode()).digest()[:8], "little") | 1


def block_keys(ids: Sequence[int], limit: Optional[int] = None, namespace: int = 0) -> list:
    """The chain keys of the whole blocks of ids[:limit] in `namespace` (see module docstring)."""
    ids = [int(t) for t in (ids if limit is None else ids[:limit])]
    keys, key = [], namespace
    for start in range(0, len(ids) - BLOCK_TOKENS + 1, BLOCK_TOKENS):
        key = hash((key, tuple(ids[start:start + BLOCK_TOKENS])))
        keys.append(key)
    return keys


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading ids a and b share."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


class PrefixCache:
    """Prompts' KV on the device, looked up by longest common prefix (see module docstring).

    `slice_prefix(prefix, length)`: the engine's operation giving a Prefix's first `length`
    positions as a new Prefix of the smallest capacity holding them
    (grok.engine.api.Engine.slice_prefix). `capacities`: the engine's prefix capacities P;
    a prompt's Prefix held in a larger one than its length needs (a continued prefill grows
    to capacity_in + chunk bucket) is compacted by `slice_prefix` before it is kept, so an
    entry costs at most the smallest capacity holding it (None: kept as given).
    """

    def __init__(self, budget_tokens: int, slice_prefix: Callable,
                 capacities: Optional[Sequence[int]] = None):
        if not isinstance(budget_tokens, int) or budget_tokens < 0:
            raise ValueError(f"prefix_cache_tokens must be an int >= 0, got {budget_tokens!r}")
        self.budget_tokens = budget_tokens
        self._slice = slice_prefix
        self._capacities = tuple(sorted(capacities)) if capacities else None
        self._entries: dict = {}            # entry_id -> _Entry
        self._index: dict = {}              # chain key -> {entry_id} holding that block chain
        self._clock = itertools.count(1)
        self._ids = itertools.count()
        self.used_tokens = 0                # sum of the entries' costs (<= budget_tokens)
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    # ---- lookup ------------------------------------------------------------------------------
    def _longest(self, ids: np.ndarray, namespace: int) -> tuple[Optional[_Entry], int]:
        """The entry of `namespace` sharing the longest prefix with ids, and that length."""
        candidates = set()
        for key in block_keys(ids, namespace=namespace):
            holders = self._index.get(key)
            if not holders:
                break
            candidates = holders
        best, best_len = None, 0
        for entry_id in sorted(candidates):            # sorted: the same order on every process
            entry = self._entries[entry_id]
            if entry.namespace != namespace:
                continue
            n = common_prefix(entry.ids, ids)
            if n > best_len or (n == best_len and best is not None
                                and entry.last_used > best.last_used):
                best, best_len = entry, n
        return best, best_len

    def acquire(self, prompt_ids: Sequence[int], namespace: int = 0) -> Optional[Hit]:
        """The longest usable hit for a prompt in `namespace` (at most len - 1 positions),
        pinned until `release(hit)`; None on a miss. The hit's prefix is the entry's own Prefix when the
        hit covers all of it, else a new Prefix of the shared positions."""
        ids = np.asarray(prompt_ids, np.int64)
        entry, n = self._longest(ids, namespace)
        n = min(n, len(ids) - 1)
        if entry is None or n < 1:
            return None
        prefix = entry.prefix if n == len(entry.ids) else self._slice(entry.prefix, n)
        entry.pins += 1
        entry.last_used = next(self._clock)
        return Hit(entry.entry_id, n, prefix)

    def release(self, hit: Hit) -> None:
        """Unpins a hit's entry (its request no longer reads it)."""
        entry = self._entries.get(hit.entry_id)
        if entry is not None and entry.pins > 0:
            entry.pins -= 1

    # ---- insertion and eviction ----------------------------------------------------------------
    def insert(self, prompt_ids: Sequence[int], prefix, capacity: int, namespace: int = 0) -> bool:
        """Keeps a prefilled prompt's Prefix (`capacity` positions on the device) for prompts of
        `namespace`; returns
        whether it was kept. An equal prompt already cached is only marked recently used; a
        prompt shorter than BLOCK_TOKENS or costlier than the whole budget is not kept."""
        ids = np.asarray(prompt_ids, np.int64)
        keys = tuple(block_keys(ids, namespace=namespace))
        if not keys:
            return False        # shorter than a block: no lookup could find it
        compact = self._compact_capacity(len(ids), capacity)
        if compact > self.budget_tokens:
            return False
        holders = {entry_id for key in keys for entry_id in self._index.get(key, ())
                   if self._entries[entry_id].namespace == namespace}
        for entry_id in sorted(holders):
            entry = self._entries[entry_id]
            if len(entry.ids) == len(ids) and common_prefix(entry.ids, ids) == len(ids):
                entry.last_used = next(self._clock)
                return False
        for entry_id in sorted(holders):    # superseded: a prefix of the new prompt
            entry = self._entries[entry_id]
            if (entry.pins == 0 and len(entry.ids) < len(ids)
                    and common_prefix(entry.ids, ids) == len(entry.ids)):
                self._remove(entry)
        if not self._make_room(compact):
            return False
        if compact < capacity:
            prefix = self._slice(prefix, len(ids))
        entry = _Entry(next(self._ids), ids, prefix, int(compact), keys, next(self._clock),
                       namespace=namespace)
        self._entries[entry.entry_id] = entry
        for key in keys:
            self._index.setdefault(key, set()).add(entry.entry_id)
        self.used_tokens += entry.cost
        return True

    def _compact_capacity(self, length: int, capacity: int) -> int:
        """The capacity an entry of `length` ids given in `capacity` positions will hold."""
        if self._capacities is None:
            return int(capacity)
        return min(int(capacity), next((p for p in self._capacities if p >= length), capacity))

    def _make_room(self, cost: int) -> bool:
        """Evicts least recently used unpinned entries until `cost` more fits."""
        if self.used_tokens + cost <= self.budget_tokens:
            return True
        unpinned = sorted((e for e in self._entries.values() if e.pins == 0),
                          key=lambda e: e.last_used)
        freeable = sum(e.cost for e in unpinned)
        if self.used_tokens - freeable + cost > self.budget_tokens:
            return False                    # the pinned entries leave no room: evict nothing
        for entry in unpinned:
            if self.used_tokens + cost <= self.budget_tokens:
                break
            self._remove(entry)
            self.evictions += 1
        return True

    def _remove(self, entry: _Entry) -> None:
        del self._entries[entry.entry_id]
        for key in entry.keys:
            holders = self._index[key]
            holders.discard(entry.entry_id)
            if not holders:
                del self._index[key]
        self.used_tokens -= entry.cost

    def clear(self) -> None:
        """Drops every unpinned entry."""
        for entry in [e for e in self._entries.values() if e.pins == 0]:
            self._remove(entry)

    def snapshot(self) -> list:
        """The cache's state as plain values (ids, cost, recency, pins), entry by entry: equal
        on every process of a multi-process job."""
        return [(tuple(e.ids.tolist()), e.cost, e.last_used, e.pins)
                for e in sorted(self._entries.values(), key=lambda e: e.entry_id)]
