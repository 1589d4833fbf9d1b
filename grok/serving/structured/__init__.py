"""Structured outputs: grammars (JSON schema, regex, choice, Lark/GBNF) compiled by llguidance,
and the per-step allowed-token masks they give the decode step.

- `tokenizers`: our tokenizers as llguidance tokenizers (its view of every token's bytes);
- `grammars`: a request's constraint (`Constraint`) -> a checked llguidance grammar, with the
  field and llguidance's message when it is bad, within bounded compile work;
- `masks`: `ConstraintState` (one request's matcher) and `fill_masks` (one packed
  [B, V/32] int32 mask for a step, filled in parallel).
"""
