"""What the scheduler keeps for a request that processes its logits: `Structured`.

Its static controls (grok.serving.logit_controls.RowControls) and, for a constrained request,
its grammar state (grok.serving.structured.masks.GrammarState), built at admission from the
Request's fields and the model's tokenizer (its llguidance tokenizer is built once per
process: when the model starts where requests may carry a grammar, else by the first
constrained request; see grok.serving.structured.tokenizers).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from grok.engine.logits_processing import MAX_LOGIT_BIAS
from grok.serving.logit_controls import RowControls, SlotRow
from grok.serving.structured.fields import constraint_of, processes_logits
from grok.serving.structured.masks import GrammarState
from grok.serving.structured.tokenizers import llg_tokenizer


@dataclasses.dataclass
class Structured:
    controls: RowControls
    grammar: Optional[GrammarState]

    @classmethod
    def of(cls, request, tokenizer, engine) -> Optional["Structured"]:
        """None for a request with plain sampling only."""
        if not processes_logits(request):
            return None
        constraint = constraint_of(request)
        grammar = None
        if constraint is not None:
            grammar = GrammarState(constraint, llg_tokenizer(tokenizer, engine.vocab_size,
                                                             engine.eos_token))
        return cls(RowControls.of(request, int(engine.eos_token), MAX_LOGIT_BIAS), grammar)

    def row(self, fed: int) -> SlotRow:
        """The slot's row of a step dispatched when the stream has fed `fed` output tokens
        (-1 before its first step: see StructuredDecoding.insert in
        grok.serving.structured_decoding), so fed + 1 are sampled."""
        return SlotRow(self.controls, self.grammar, fed + 1)
