"""The command line's flags: `build_parser()` for `run.py` / `grok run`, argument types, and
the table from Request fields to the flags and input-record keys that fill them.

The table lets every error name what the user typed (`--top-p` on the command line, 'top_p'
in an input record) from the error's field (grok.serving.requests.RequestError.field).
"""

from __future__ import annotations

import argparse
from typing import Optional

from grok.cli.structured_flags import add_arguments as add_structured_arguments
from grok.loading import (BYTE_TOKENIZER, CONFIG_FILE, DEFAULT_CHECKPOINT_DIR, DEFAULT_MAX_SLOTS,
                          DEFAULT_TOKENIZER, LARGEST_DEFAULT_PAD)
from grok.serving.requests import DEFAULT_MAX_TOKENS, REFERENCE_NAMES

REFERENCE_PROMPT = "The answer to life the universe and everything is of course"
MULTIHOST_ENV = ("GROK_COORDINATOR", "GROK_NUM_PROCESSES", "GROK_PROCESS_ID")

# Request field -> (the flag that fills it, the input-record key users write for it).
FIELD_NAMES = {
    "temperature": ("--temperature", "temperature"),
    "top_p": ("--top-p", "top_p"),
    "top_k": ("--top-k", "top_k"),
    "max_tokens": ("--max-tokens", "max_tokens"),
    "seed": ("--seed", "seed"),
    "stop_tokens": ("--stop-tokens", "stop_tokens"),
    "stop": ("--stop", "stop"),
    "logprobs": ("--logprobs", "logprobs"),
    "echo": ("--echo-logprobs", "echo_logprobs"),
    **{name: ("--" + name.replace("_", "-"), name) for name in (
        "json_schema", "regex", "choice", "grammar", "logit_bias", "min_p", "presence_penalty",
        "frequency_penalty", "repetition_penalty", "min_tokens")},
}
# Input-record key -> the Request field it fills (users' names, Request's own, the reference's).
RECORD_FIELDS = {record: field for field, (_, record) in FIELD_NAMES.items()}
RECORD_FIELDS.update({field: field for field in FIELD_NAMES})
RECORD_FIELDS.update(REFERENCE_NAMES)
RECORD_KEYS = set(RECORD_FIELDS) | {"prompt", "prompt_ids", "request_id", "id"}


def _ints(text: str) -> tuple[int, ...]:
    """argparse type: a comma list of non-negative ints."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected a comma list of ints, got {text!r}")
    return values


def _mesh_shape(text: str) -> tuple[int, ...]:
    shape = _ints(text)
    if len(shape) != 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected two positive ints 'D,M', got {text!r}")
    return shape


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):   # no "(default: None)" noise
        no_default = action.default in (None, False, ())
        return action.help if no_default else super()._get_help_string(action)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--checkpoint, --config, --tokenizer, --dtype, --moe, --mesh, --hosts, --batch-size,
    --pad-sizes: what builds the runner (shared by `grok run` and `grok serve`)."""
    model = p.add_argument_group("model")
    model.add_argument("--checkpoint", metavar="DIR", help="directory holding ckpt-0/ "
                       f"(default: ./{DEFAULT_CHECKPOINT_DIR}/ if it has ckpt-0, else the "
                       "random-weight demo)")
    model.add_argument("--config", metavar="FILE.json", help=f"model config (default: "
                       f"DIR/{CONFIG_FILE} when present, else Grok-1)")
    model.add_argument("--tokenizer", metavar="FILE", help=f"SentencePiece model, or "
                       f"'{BYTE_TOKENIZER}' for the byte tokenizer (default: "
                       f"./{DEFAULT_TOKENIZER} or DIR/{DEFAULT_TOKENIZER}; bytes for a model "
                       "whose vocabulary is the byte tokenizer's 259 ids, like the demo)")
    model.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                       help="activations; auto = float32 on CPU (faster there and closer to "
                       "the reference), bfloat16 on accelerators")
    model.add_argument("--moe", choices=("sparse", "dense"), help="MoE kernel (default: config's)")
    model.add_argument("--max-model-len", type=int, metavar="N", help="context in tokens "
                       "(prompt plus output; the KV cache's length), at most the config's "
                       "sequence_len for trained weights (default: the config's)")
    serving = p.add_argument_group("serving")
    serving.add_argument("--mesh", type=_mesh_shape, metavar="D,M", help="local (data, model) "
                         "mesh (default: 1,<local devices>; 1,1 for the demo)")
    serving.add_argument("--hosts", type=_mesh_shape, metavar="D,M", default="1,1",
                         help="between-hosts mesh")
    serving.add_argument("--batch-size", "--slots", type=int, metavar="N", dest="batch_size",
                         help=f"slots: requests decoded together (default: the number of "
                         f"requests, at most {DEFAULT_MAX_SLOTS}; 1 for --interactive)")
    serving.add_argument("--pad-sizes", type=_ints, metavar="T,..", help=f"prompt buckets "
                         f"(default: {LARGEST_DEFAULT_PAD} capped at sequence_len; "
                         f"128 for the demo)")
    serving.add_argument("--prefix-cache-tokens", type=int, metavar="N",
                         help="prompt KV positions kept on the devices for reuse by later "
                         "prompts that start the same way (default 8192; 0 turns it off)")
    serving.add_argument("--compile-cache", metavar="DIR|off", help="keep compiled programs "
                         "in DIR, so the next start skips XLA (default: $GROK_COMPILE_CACHE, "
                         "else grok/xla in the user's cache directory, ~/.cache)")
    serving.add_argument("--speculative-tokens", type=int, metavar="K", default=0,
                         help="speculative decoding: verify up to K tokens drafted from each "
                         "request's own prompt and output per step (same tokens; 0 = off)")
    serving.add_argument("--speculative-method", choices=("ngram",), default="ngram",
                         help="how drafts are made: ngram (prompt lookup)")
    hosts = p.add_argument_group("multi-host (or env " + ", ".join(MULTIHOST_ENV) + ")")
    hosts.add_argument("--coordinator", metavar="HOST:PORT")
    hosts.add_argument("--num-processes", type=int, metavar="N")
    hosts.add_argument("--process-id", type=int, metavar="I")


def build_parser(prog: str = "run.py", serve_arguments: Optional[callable] = None
                 ) -> argparse.ArgumentParser:
    """The flags of `run.py` / `grok run`. `serve_arguments(parser)` adds the HTTP server's."""
    p = argparse.ArgumentParser(prog=prog, formatter_class=_HelpWithDefaults, description=(
        "Runs Grok-1 (checkpoints/ckpt-0 or --checkpoint DIR), or with no checkpoint a tiny "
        "demo model with random weights, on prompts, and prints the completions. Exit status: "
        "0; 1 if a request failed (the others still ran); 2 for a bad command line, "
        "checkpoint, config, tokenizer or input file."))
    add_model_arguments(p)
    inputs = p.add_argument_group("requests")
    inputs.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    inputs.add_argument("--input-file", metavar="FILE", help="one prompt per line; or .jsonl / "
                        ".json records with 'prompt' or 'prompt_ids' and optional per-request "
                        f"fields {sorted(set(r for _, r in FIELD_NAMES.values()))} and "
                        "'request_id'")
    inputs.add_argument("--interactive", action="store_true", help="a REPL keeping the "
                        "conversation as context; /help lists its commands")
    inputs.add_argument("--serve", action="store_true", help="serve an OpenAI-compatible "
                        "HTTP API instead (same as `grok serve`)")
    sampling = p.add_argument_group("sampling (defaults for every request)")
    sampling.add_argument("--max-tokens", "--max-len", type=int, default=DEFAULT_MAX_TOKENS,
                          dest="max_tokens", metavar="N", help="new tokens at most")
    sampling.add_argument("--temperature", type=float, default=0.01, help="0 = greedy")
    sampling.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling")
    sampling.add_argument("--top-k", type=int, default=0, help="0 = off")
    sampling.add_argument("--seed", type=int, default=42, help="request 0 uses it; request i "
                          "a seed hashed from (seed, i), so runs with other seeds never "
                          "repeat each other's streams")
    sampling.add_argument("--stop", action="append", default=[], metavar="TEXT",
                          help="a string that ends a completion, not included (repeatable)")
    sampling.add_argument("--stop-tokens", type=_ints, default=(), metavar="ID,..",
                          help="token ids that end a completion (besides EOS)")
    add_structured_arguments(p)
    output = p.add_argument_group("output")
    output.add_argument("--stream", action="store_true", help="print text as it is made "
                        "(several requests: each in turn, in input order); with --json it "
                        "goes to stderr, so stdout stays one JSON object per line")
    output.add_argument("--json", action="store_true", help="one JSON object per request, "
                        "in input order: prompt_ids, output_ids (new tokens), text, ...; "
                        "non-finite numbers are written as null (and said so on stderr)")
    output.add_argument("--echo-logprobs", action="store_true", help="also score the prompt: "
                        "prompt_logprobs, null then log p(token_t | tokens before t)")
    output.add_argument("--logprobs", action="store_true", help="new tokens' logprobs and top-8")
    output.add_argument("--quiet", action="store_true", help="no notices, progress or run "
                        "summary on stderr (errors still)")
    if serve_arguments is not None:
        serve_arguments(p)
    return p
