"""The host side of the processed decode step: each running request's `LogitControls` row.

The scheduler asks `StepControls.build` for a step's controls when any running request
processes its logits (grok.serving.structured.fields.processes_logits), else runs the plain
step. Rows of other slots are neutral (all-ones mask, no bias, no penalties), which the
device leaves bit for bit as they are. A request's static row (bias, min_p, penalties) is
made once at admission (`RowControls.of`); its mask row per step: the grammar's allowed
tokens, with EOS and the stop tokens cleared while fewer than `min_tokens` are generated.

Glossary: B slots, V vocabulary, W mask words, K logit_bias entries.
"""

from __future__ import annotations

import time
from typing import NamedTuple, Optional

import numpy as np

from grok.engine.logits_processing import MASK_BITS, LogitControls, neutral_controls
from grok.serving.structured.masks import GrammarState, fill_masks


class RowControls(NamedTuple):
    """One request's static controls (host values)."""

    bias_ids: np.ndarray      # [K] int32
    bias_values: np.ndarray   # [K] float32
    scalars: tuple            # (min_p, presence, frequency, repetition)
    banned_early: tuple       # token ids not sampled before min_tokens (EOS, stop tokens)
    min_tokens: int

    @classmethod
    def of(cls, request, eos_token: int, k: int) -> "RowControls":
        ids, values = np.zeros((k,), np.int32), np.zeros((k,), np.float32)
        for i, (token, bias) in enumerate(request.logit_bias):
            ids[i], values[i] = token, bias
        return cls(ids, values, (request.min_p, request.presence_penalty,
                                 request.frequency_penalty, request.repetition_penalty),
                   (eos_token,) + tuple(request.stop_tokens), request.min_tokens)


class SlotRow(NamedTuple):
    """What a step needs of one processed slot."""

    controls: RowControls
    grammar: Optional[GrammarState]
    generated: int            # tokens the request has sampled before this step's


def _clear(masks: np.ndarray, row: int, tokens) -> None:
    """Disallows `tokens` in row `row` of packed int32 masks [B, W]."""
    words = masks.view(np.uint32)
    for t in tokens:
        if t // MASK_BITS < words.shape[1]:
            words[row, t // MASK_BITS] &= np.uint32(~(1 << (t % MASK_BITS)) & 0xFFFFFFFF)


class StepControls:
    """Builds each processed step's LogitControls for `batch_size` slots."""

    def __init__(self, batch_size: int, vocab_size: int):
        self.neutral = neutral_controls(batch_size, vocab_size)
        self.last_fill_seconds = 0.0     # mask filling of the last step (for metrics)

    def build(self, rows: dict) -> LogitControls:
        """rows: {slot: SlotRow} of the processed slots."""
        c = self.neutral
        masks = c.allowed.copy()
        bias_ids, bias_values = c.bias_ids.copy(), c.bias_values.copy()
        scalars = np.stack([c.min_p, c.presence_penalty, c.frequency_penalty,
                            c.repetition_penalty], axis=1)
        processed = c.processed.copy()
        for slot, row in rows.items():
            bias_ids[slot], bias_values[slot] = row.controls.bias_ids, row.controls.bias_values
            scalars[slot] = row.controls.scalars
            processed[slot] = True
        start = time.perf_counter()
        fill_masks(masks, [(row.grammar, slot) for slot, row in rows.items()
                           if row.grammar is not None])
        self.last_fill_seconds = time.perf_counter() - start
        for slot, row in rows.items():
            if row.generated < row.controls.min_tokens and not (
                    row.grammar is not None and row.grammar.finished):
                _clear(masks, slot, row.controls.banned_early)
        return LogitControls(masks, bias_ids, bias_values, *scalars.T.copy(), processed)
