"""Host-side bounds on device lengths, so the engine picks a decode variant without a sync.

The decode step reads only the first kv_len cache positions (grok.model.transformer.live_kv_len):
kv_len must cover every active slot's step + 1. Those steps are device values; reading them
would stall the pipeline (a step is dispatched before the previous one is read). The engine
knows them anyway, on the host: a prefill of n tokens after a prefix of length p gives p + n,
an insert sets the slot to the prefix's length, each decode step adds one per active slot, a
release frees the slot. `HostShadow` attaches such host values to the device values they
describe (by identity, weakly: an entry lives as long as its array), so the engine API stays
functional: any number of states and prefixes can be alive, each with its own lengths.

A value the engine did not make (a state or prefix built by hand) has no entry; callers then
fall back on a safe bound (a prefix's capacity, a state's sequence_len): never too short,
only slower.

Glossary: B slots, S sequence_len.
"""

from __future__ import annotations

import weakref
from typing import Any, Optional

# Per slot of a DecodeState: the cached positions of an active slot, None for a free one.
SlotLengths = tuple[Optional[int], ...]   # [B]


class HostShadow:
    """A host value for each of some device arrays, looked up by the array itself."""

    def __init__(self):
        self._entries: dict[int, tuple[weakref.ref, Any]] = {}

    def set(self, array: Any, value: Any) -> None:
        key = id(array)

        def forget(ref, key=key):
            entry = self._entries.get(key)
            if entry is not None and entry[0] is ref:   # not a newer entry for the same id
                del self._entries[key]

        self._entries[key] = (weakref.ref(array, forget), value)

    def get(self, array: Any, default: Any = None) -> Any:
        entry = self._entries.get(id(array))
        if entry is None or entry[0]() is not array:
            return default
        return entry[1]

    def __len__(self) -> int:
        return len(self._entries)


def after_step(lengths: SlotLengths, sequence_len: int) -> SlotLengths:
    """Slot lengths after one decode step: each active slot one longer (at most S)."""
    return tuple(None if n is None else min(n + 1, sequence_len) for n in lengths)


def longest_after_step(lengths: SlotLengths) -> int:
    """Cache positions the next decode step must read: the longest active slot + its new
    token (1 when no slot is active)."""
    return max((n + 1 for n in lengths if n is not None), default=1)


def with_slot(lengths: SlotLengths, slot: int, value: Optional[int]) -> SlotLengths:
    return lengths[:slot] + (value,) + lengths[slot + 1:]
