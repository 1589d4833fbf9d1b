"""The embedded demo: a tiny Grok-architecture model with deterministic random int8 weights.

`python run.py` with no checkpoint runs this, so the whole pipeline (int8 weights in the
release's format and scale groups, MoE routing, rotary attention, KV cache, scheduler,
sampling) can be seen working on any machine in seconds. The weights are random: the text it
writes is meaningless, and the CLI says so.

The model has every Grok-1 feature at toy size: grouped-query attention, a mixture of experts
choosing 2, Grok-1's multipliers derived the same way from the sizes. Its vocabulary is the
byte tokenizer's, so every id decodes; see `demo_tensors` for how the random weights are
kept to printable text.

`python -m grok.demo DIR` writes the same weights as `DIR/ckpt-0` (the release's file format)
and `DIR/config.json`; `python run.py --checkpoint DIR` then runs it like any checkpoint. Its
tokenizer is the byte tokenizer: no tokenizer.model is written, and the command line picks the
byte tokenizer for a model whose vocab_size is the byte tokenizer's 259 ids. With the bare
run's prompt bucket (`--pad-sizes 128 --mesh 1,1`) it prints exactly what the bare `run.py`
prints.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np

from grok import checkpoint
from grok.config import LanguageModelConfig, TransformerConfig
from grok.tokenizer import ByteTokenizer

DEMO_SEED = 1234          # fixes the demo's weights, so every machine prints the same text
_EMB_SIZE = 128
_KEY_SIZE = 32

DEMO = LanguageModelConfig(
    vocab_size=ByteTokenizer.vocab_size,   # 259: pad 0, bos 1, eos 2, then the 256 bytes
    pad_token=0,
    eos_token=2,
    sequence_len=256,
    # Grok-1's multipliers follow from its sizes: sqrt(emb_size), 1/sqrt(3), 1/sqrt(key_size).
    embedding_multiplier_scale=math.sqrt(_EMB_SIZE),
    output_multiplier_scale=1 / math.sqrt(3),
    model=TransformerConfig(
        emb_size=_EMB_SIZE,
        widening_factor=8,
        key_size=_KEY_SIZE,
        num_q_heads=4,
        num_kv_heads=2,
        num_layers=2,
        attn_output_multiplier=1 / math.sqrt(_KEY_SIZE),
        num_experts=4,
        num_selected_experts=2,
    ),
)

_EMBED_STD = 0.02         # see demo_tensors
_LAYER_GAIN = 2.0
_PRINTABLE = "".join(map(chr, range(ord(" "), ord("~") + 1))) + "\n"
_EMBEDDINGS = "language_model/in_out_embed/embeddings"

DEMO_PAD_SIZES = (128,)   # one prefill bucket: one compile; longer prompts go in chunks
RANDOM_WEIGHTS_NOTICE = (
    "No checkpoint found, so this is the embedded demo: a tiny Grok-architecture model "
    "with RANDOM weights (seed {seed}). Its output is meaningless; it shows the engine "
    "running. For Grok-1, put the release in checkpoints/ckpt-0 or pass --checkpoint DIR.")


def demo_tensors(config: LanguageModelConfig = DEMO, seed: int = DEMO_SEED) -> dict:
    """ckpt_path -> tensor as in the release: int8 QuantizedWeight8bit projections, float32 rest.

    Two choices keep the random text readable. With Grok's tied embeddings and the default
    scales, the embedding dominates the residual stream and the model just repeats the last
    byte; a small embedding and a larger layer gain let the layers steer. And the embedding
    rows of bytes that are not printable ASCII (or newline) are zero, so their logits are 0,
    below the best printable byte's: the demo never writes control bytes or broken UTF-8 (nor
    EOS, so it writes max_tokens bytes).
    """
    tensors = checkpoint.random_tensors(config, seed, embed_std=_EMBED_STD, weight_gain=_LAYER_GAIN)
    printable = np.zeros(config.vocab_size, np.float32)                    # [V]
    printable[ByteTokenizer().encode(_PRINTABLE)] = 1.0
    tensors[_EMBEDDINGS] = tensors[_EMBEDDINGS] * printable[:, None]       # [V, D]
    return checkpoint.quantize_tensors(tensors, config)


def demo_params(config: LanguageModelConfig = DEMO, seed: int = DEMO_SEED) -> dict:
    """The demo's host params in the model's stacked tree (layers on a leading axis)."""
    return checkpoint.stack_params(demo_tensors(config, seed), config)


def write_demo_checkpoint(directory: str, config: LanguageModelConfig = DEMO,
                          seed: int = DEMO_SEED) -> str:
    """Writes DIR/ckpt-0 (release format) and DIR/config.json; returns DIR."""
    checkpoint.save_checkpoint(demo_tensors(config, seed), directory, config)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config.to_dict(), f, indent=1)
    return directory


def main(argv=None) -> str:
    """`python -m grok.demo DIR`."""
    parser = argparse.ArgumentParser(prog="python -m grok.demo", description=(
        "Writes the embedded demo model (random weights, byte tokenizer) as a checkpoint in "
        "the Grok-1 release's format: DIR/ckpt-0/ and DIR/config.json."))
    parser.add_argument("directory", metavar="DIR", help="where to write (created if needed)")
    directory = write_demo_checkpoint(parser.parse_args(argv).directory)
    print(f"Wrote {os.path.join(directory, 'ckpt-0')} and {os.path.join(directory, 'config.json')}."
          f" Run it with: python run.py --checkpoint {directory}")
    return directory


if __name__ == "__main__":
    main()
