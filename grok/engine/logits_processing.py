"""Per-row logit processing before sampling: allowed-token masks, logit_bias, penalties, min_p.

The compiled decode step has two variants (grok.engine.engine): the plain one samples the
model's logits as they are; the processed one first runs `process_logits` with this step's
`LogitControls`, built by the host (grok.serving.logit_controls). A row whose controls are
neutral (`processed` False: an all-ones mask and no bias, penalty or min_p) keeps its logits
bit for bit (a final per-row `where`), so an unconstrained request's tokens are the same
whether or not a constrained one shares its step, and whichever variant runs.

Definitions (OpenAI's and vLLM's), in the order applied, on a row's logits l:
- logit_bias: l[t] += bias[t];
- repetition_penalty r: every token of the prompt or generated so far has l / r where
  l > 0, else l * r (vLLM's definition);
- frequency_penalty f, presence_penalty p: l[t] -= f * count[t] + p * (count[t] > 0);
- the allowed-token mask: a disallowed token's logit becomes DISALLOWED_LOGIT;
- min_p m (with temperature T > 0): a token whose probability under the temperature-scaled
  softmax is below m times the most probable one's is disallowed, i.e. keep
  (l[t] - max l) / T >= log m.
Counts are of the tokens the row generated (`token_counts`, kept in the DecodeState per slot,
reset when a request enters the slot): presence and frequency penalties count outputs only,
as OpenAI defines them. The prompt's tokens (`prompt_tokens`, marked once when a request with
a repetition penalty enters its slot, grok.engine.steps.mark_prompt) count for the repetition
penalty alone.

Glossary: B rows (slots), V vocabulary, W = ceil(V / 32) mask words, K logit_bias entries.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from grok.engine.sampling import DISALLOWED_LOGIT

MASK_BITS = 32            # tokens per packed mask word (llguidance's layout)
MAX_LOGIT_BIAS = 300      # logit_bias entries per request (OpenAI's limit)


def mask_words(vocab_size: int) -> int:
    """W: int32 words of a packed allowed-token mask of `vocab_size` tokens."""
    return (vocab_size + MASK_BITS - 1) // MASK_BITS


class LogitControls(NamedTuple):
    """One decode step's per-row processing (device arrays; host values in NumPy)."""

    allowed: jax.Array            # [B, W] int32: bit t % 32 of word t // 32 set = t allowed
    bias_ids: jax.Array           # [B, K] int32 token ids (padding: 0 with bias 0)
    bias_values: jax.Array        # [B, K] float32
    min_p: jax.Array              # [B] float32; 0 = off
    presence_penalty: jax.Array   # [B] float32; 0 = off
    frequency_penalty: jax.Array  # [B] float32; 0 = off
    repetition_penalty: jax.Array  # [B] float32; 1 = off
    processed: jax.Array          # [B] bool: the row has any of the above


def neutral_controls(batch_size: int, vocab_size: int) -> LogitControls:
    """Host controls that leave every row as it is (NumPy)."""
    b = batch_size
    return LogitControls(np.full((b, mask_words(vocab_size)), -1, np.int32),
                         np.zeros((b, MAX_LOGIT_BIAS), np.int32),
                         np.zeros((b, MAX_LOGIT_BIAS), np.float32),
                         np.zeros((b,), np.float32), np.zeros((b,), np.float32),
                         np.zeros((b,), np.float32), np.ones((b,), np.float32),
                         np.zeros((b,), bool))


def unpack_mask(allowed: jax.Array, vocab_size: int) -> jax.Array:
    """[B, W] packed int32 -> [B, V] bool."""
    bits = jnp.arange(MASK_BITS, dtype=jnp.int32)
    words = jax.lax.shift_right_logical(allowed[:, :, None], bits[None, None, :]) & 1
    return words.reshape(allowed.shape[0], -1)[:, :vocab_size].astype(bool)


def process_logits(logits: jax.Array, controls: LogitControls, token_counts: jax.Array,
                   prompt_tokens: jax.Array, temperature: jax.Array) -> jax.Array:
    """The logits [B, V] float32 after each row's controls (see the module docstring).

    token_counts [B, V] int32: tokens each row generated; prompt_tokens [B, V] bool: tokens
    of each row's prompt; temperature [B] (0 = greedy)."""
    logits = jnp.asarray(logits, jnp.float32)
    b, v = logits.shape
    rows = jnp.arange(b)[:, None]
    out = logits.at[rows, controls.bias_ids].add(controls.bias_values)           # [B, V]
    r = controls.repetition_penalty[:, None]
    seen = token_counts > 0
    out = jnp.where(seen | prompt_tokens, jnp.where(out > 0, out / r, out * r), out)
    counts = token_counts.astype(jnp.float32)
    out = (out - controls.frequency_penalty[:, None] * counts
           - controls.presence_penalty[:, None] * seen.astype(jnp.float32))
    out = jnp.where(unpack_mask(controls.allowed, v), out, DISALLOWED_LOGIT)
    # min_p over the temperature-scaled probabilities, in logit space
    best = jnp.max(out, axis=-1, keepdims=True)
    min_p_on = (controls.min_p > 0) & (temperature > 0)
    floor = jnp.where(min_p_on, temperature * jnp.log(jnp.where(min_p_on, controls.min_p, 1.0)),
                      -jnp.inf)                                                 # [B]
    out = jnp.where(out - best >= floor[:, None], out, DISALLOWED_LOGIT)
    return jnp.where(controls.processed[:, None], out, logits)


def count_tokens(token_counts: jax.Array, tokens: jax.Array, active: jax.Array) -> jax.Array:
    """token_counts [B, V] with each active row's new token [B] counted."""
    b = tokens.shape[0]
    return token_counts.at[jnp.arange(b), tokens].add(active.astype(token_counts.dtype))
