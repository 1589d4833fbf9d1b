"""Drafting by prompt lookup: guess a request's next tokens from its own prompt and output.

Speculative decoding (grok.serving.speculation) verifies drafted tokens in one engine step.
With no draft model (none shares Grok-1's tokenizer), the drafts come from the request's own
context, as vLLM's n-gram proposer and llama.cpp's prompt lookup do: the last n tokens of
prompt + output are looked up among earlier positions, and the tokens that followed their
most recent earlier occurrence are the draft. The longest n (from `max_ngram` down to
`min_ngram`) with a match wins; nothing matching gives no draft.

A match close to the end (a loop of period p < k) runs out of earlier tokens after p; the
draft then keeps copying from itself (as an LZ77 back-reference does), so a loop drafts a
full k tokens.

Drafts depend only on the token ids (prompt + output), which every process of a multi-host
job holds alike, so every process drafts the same tokens without publishing them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_MAX_NGRAM = 3
DEFAULT_MIN_NGRAM = 1


def _last_match(ids: np.ndarray, n: int) -> int:
    """Start of the most recent earlier occurrence of ids[-n:] (not the suffix itself), -1
    when there is none. ids [L]."""
    length = ids.shape[0]
    if length <= n:
        return -1
    # windows[i] = ids[i:i + n] for i in [0, L - n); the suffix itself starts at L - n
    windows = np.lib.stride_tricks.sliding_window_view(ids[:length - 1], n)      # [L - n, n]
    hits = np.flatnonzero(np.all(windows == ids[length - n:], axis=1))
    return int(hits[-1]) if hits.size else -1


def propose(ids: Sequence[int], k: int, max_ngram: int = DEFAULT_MAX_NGRAM,
            min_ngram: int = DEFAULT_MIN_NGRAM) -> list[int]:
    """Up to `k` draft tokens continuing `ids` (prompt + output so far); [] when the last
    n-gram, for every n in [min_ngram, max_ngram], occurs nowhere earlier."""
    if k <= 0 or not ids:
        return []
    seq = np.asarray(ids, np.int64)
    for n in range(min(max_ngram, len(seq) - 1), min_ngram - 1, -1):
        start = _last_match(seq, n)
        if start < 0:
            continue
        source = start + n                     # the token that followed the match
        draft: list[int] = []
        for j in range(k):                     # copy forward; past the end, from the draft
            at = source + j
            draft.append(int(seq[at]) if at < len(seq) else draft[at - len(seq)])
        return draft
    return []
