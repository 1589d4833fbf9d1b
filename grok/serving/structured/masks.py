"""Grammar state per request and the packed allowed-token masks of one decode step.

`GrammarState` wraps one llguidance matcher: built when the request is admitted (in every
process of a multi-host job alike: masks follow from the published decisions and the sampled
tokens, so no mask travels between hosts), advanced with each sampled token, `finished` when
the grammar accepts and allows nothing but EOS. `fill_masks` fills the rows of the step's
packed mask [B, W] int32 (bit t % 32 of word t // 32 = token t allowed) for every
constrained slot at once, in llguidance's thread pool (the work is in Rust, without the GIL).
"""

from __future__ import annotations

import functools

import llguidance
import llguidance.numpy as llg_numpy
import numpy as np

from grok.serving.structured.grammars import Constraint, parser_limits


@functools.lru_cache(maxsize=1)
def _executor() -> llguidance.LLExecutor:
    return llguidance.LLExecutor()


class GrammarState:
    """One request's position in its grammar."""

    def __init__(self, constraint: Constraint, tokenizer: llguidance.LLTokenizer):
        self.matcher = llguidance.LLMatcher(tokenizer, constraint.grammar, log_level=0,
                                            limits=parser_limits())
        if self.matcher.is_error():
            raise ValueError(f"the {constraint.kind} constraint cannot be used with this "
                             f"tokenizer: {self.matcher.get_error()}")

    def advance(self, token: int) -> None:
        """Takes a sampled token (ValueError when the grammar refuses it: a bug, since the
        mask allowed only tokens it takes)."""
        if not self.matcher.consume_token(int(token)):
            raise ValueError(f"the grammar refused token {token}: {self.matcher.get_error()}")

    @property
    def finished(self) -> bool:
        """The output is complete: the grammar allows nothing but EOS."""
        return self.matcher.is_stopped()


def fill_masks(masks: np.ndarray, rows: list[tuple[GrammarState, int]]) -> None:
    """Fills row r of `masks` ([B, W] int32, C-contiguous) with the allowed tokens of each
    (state, r); other rows are left as they are."""
    if rows:
        llg_numpy.fill_next_token_bitmask_par(_executor(), [(s.matcher, r) for s, r in rows],
                                              masks)
