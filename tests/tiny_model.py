"""The tiny random model the runner, engine and prefix-cache tests share, and its reference:
`FullForward` (grok.model.build_forward over the whole sequence, no KV cache)."""

import functools

import jax
import numpy as np

from grok.config import LanguageModelConfig, TransformerConfig
from grok.model.transformer import build_forward
from grok.runtime_config import RuntimeConfig
from grok.tokenizer import ByteTokenizer

SEED = 42                # ModelRunner's default rng_seed for random weights
F32 = RuntimeConfig(activation_dtype="float32")   # the tests' activations (exact on CPU)
PAD_SIZES = (8, 16)
TOLERANCE = dict(rtol=1e-4, atol=1e-4)   # float32 cached vs full forward
NUM_SPECIAL = ByteTokenizer.NUM_SPECIAL


def tiny_config(eos_token: int = 2) -> LanguageModelConfig:
    # vocab 259 = the byte tokenizer's, so decoded outputs include incomplete UTF-8 bytes.
    return LanguageModelConfig(
        model=TransformerConfig(emb_size=32, key_size=8, num_q_heads=4, num_kv_heads=2,
                                num_layers=2, num_experts=4, num_selected_experts=2,
                                widening_factor=2),
        vocab_size=ByteTokenizer.vocab_size, sequence_len=128, eos_token=eos_token)


def make_prompt(length: int, seed: int) -> list:
    """Token ids of real bytes (no pad/bos/eos ids)."""
    rng = np.random.default_rng(seed)
    return rng.integers(NUM_SPECIAL, ByteTokenizer.vocab_size, size=length).tolist()




class FullForward:
    """The reference: one forward over the whole sequence, no memory."""

    def __init__(self, config: LanguageModelConfig, params: dict):
        self.config = config
        self.params = jax.device_put(params, jax.devices()[0])
        self._forward = jax.jit(build_forward(config, F32))

    @functools.lru_cache(maxsize=None)
    def _logits(self, ids: tuple) -> np.ndarray:
        # Right-padded to sequence_len so one compilation serves every length; the causal
        # mask keeps the padding from touching the real positions.
        tokens = np.full((1, self.config.sequence_len), self.config.pad_token, np.int32)
        tokens[0, :len(ids)] = ids
        logits, _ = self._forward(self.params, tokens)
        # (sliced on the host: slicing the device array would compile a program per length)
        return np.asarray(logits)[0, :len(ids)]

    def logits(self, ids) -> np.ndarray:
        """[len(ids), V] float32."""
        return self._logits(tuple(int(t) for t in ids))

    def logprobs(self, ids) -> np.ndarray:
        return np.asarray(jax.nn.log_softmax(self.logits(ids), axis=-1))

    def greedy(self, prompt, max_len: int, stop_tokens=()) -> tuple[list, str]:
        """Greedy decoding by full forwards: (output ids, finish reason)."""
        ids, out = list(prompt), []
        while len(out) < max_len:
            token = int(np.argmax(self.logits(ids)[-1]))
            if token in stop_tokens:
                return out, "stop"
            out.append(token)
            ids.append(token)
        return out, "length"
