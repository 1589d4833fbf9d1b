"""The command line behind `run.py`: pick a model, build the runner, read requests, print results.

The model: `--checkpoint DIR` (or `checkpoints/` when it holds ckpt-0) runs Grok-1 or `--config`
like the reference's run.py; `--config` alone, random weights; nothing, the demo (grok.demo).
Requests (`--prompt`, `--input-file`, or the reference's prompt) are sent at once, served
`--batch-size` at a time, and printed in input order; a bad one gets its own error and the
others still run. `--interactive` is a REPL over a running conversation.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import math
import os
import sys
from typing import Any, Optional

import jax

from grok import demo
from grok.checkpoint import CheckpointError
from grok.config import GROK_1, load_config
from grok.serving.requests import Request, TokenEvent
from grok.engine.runner import InferenceRunner, ModelRunner
from grok.tokenizer import ByteTokenizer, SentencePieceTokenizer

DEFAULT_CHECKPOINT_DIR = "checkpoints"      # the reference's CKPT_PATH
DEFAULT_TOKENIZER = "tokenizer.model"       # the reference's tokenizer_path
BYTE_TOKENIZER = "bytes"                    # --tokenizer bytes: grok.tokenizer.ByteTokenizer
REFERENCE_PROMPT = "The answer to life the universe and everything is of course"
LARGEST_DEFAULT_PAD = 1024                  # the reference's pad_sizes=(1024,)
MULTIHOST_ENV = ("GROK_COORDINATOR", "GROK_NUM_PROCESSES", "GROK_PROCESS_ID")
# Per-request fields an input record may set, and the Request field each one fills.
RECORD_FIELDS = {"temperature": "temperature", "top_p": "nucleus_p", "top_k": "top_k",
                 "max_len": "max_len", "seed": "rng_seed", "stop_tokens": "stop_tokens",
                 "logprobs": "logprobs", "echo_logprobs": "echo"}
RECORD_FIELDS.update({name: name for name in RECORD_FIELDS.values()})  # Request's names too
RECORD_KEYS = set(RECORD_FIELDS) | {"prompt", "prompt_ids", "request_id", "id"}


class UsageError(Exception):
    """A problem with the command line or the files it names: printed, exit status 2."""


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py", formatter_class=_HelpWithDefaults, description=(
        "Runs Grok-1 (checkpoints/ckpt-0 or --checkpoint), or with no checkpoint a tiny demo "
        "model with random weights, on prompts. Exit status: 0; 1 if a request failed (the "
        "others still ran); 2 for a bad command line, checkpoint, config or tokenizer."))
    model = p.add_argument_group("model")
    model.add_argument("--checkpoint", metavar="DIR", help="directory holding ckpt-0/ (default: "
                       f"{DEFAULT_CHECKPOINT_DIR}/ if it has ckpt-0, else the random-weight demo)")
    model.add_argument("--config", metavar="FILE.json", help="model config (default: Grok-1)")
    model.add_argument("--tokenizer", metavar="FILE", help=f"SentencePiece model, or "
                       f"'{BYTE_TOKENIZER}' for the demo's byte tokenizer (default: "
                       f"./{DEFAULT_TOKENIZER} or DIR/{DEFAULT_TOKENIZER}; bytes for the demo)")
    model.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                       help="activations; auto = float32 on CPU (faster there and closer to "
                       "the reference), the config's (bfloat16) on accelerators")
    model.add_argument("--moe", choices=("sparse", "dense"), help="MoE kernel (default: config's)")
    serving = p.add_argument_group("serving")
    serving.add_argument("--mesh", type=_mesh_shape, metavar="D,M", help="local (data, model) "
                         "mesh (default: 1,<local devices>; 1,1 for the demo)")
    serving.add_argument("--hosts", type=_mesh_shape, metavar="D,M", default="1,1",
                         help="between-hosts mesh")
    serving.add_argument("--batch-size", type=int, default=1, metavar="N",
                         help="slots: requests decoded together")
    serving.add_argument("--pad-sizes", type=_ints, metavar="T,..", help=f"prompt buckets "
                         f"(default: {LARGEST_DEFAULT_PAD} capped at sequence_len; "
                         f"{','.join(map(str, demo.DEMO_PAD_SIZES))} for the demo)")
    inputs = p.add_argument_group("requests")
    inputs.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    inputs.add_argument("--input-file", metavar="FILE", help="one prompt per line; or .jsonl / "
                        ".json records with 'prompt' or 'prompt_ids' and optional per-request "
                        f"fields {sorted(RECORD_FIELDS)} and 'request_id'")
    inputs.add_argument("--interactive", action="store_true", help="a REPL keeping the "
                        "conversation as context; /clear forgets it, /exit quits")
    sampling = p.add_argument_group("sampling (defaults for every request)")
    sampling.add_argument("--max-len", type=int, default=100, help="new tokens at most")
    sampling.add_argument("--temperature", type=float, default=0.01, help="0 = greedy")
    sampling.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling")
    sampling.add_argument("--top-k", type=int, default=0, help="0 = off")
    sampling.add_argument("--seed", type=int, default=42, help="request i uses seed + i")
    sampling.add_argument("--stop-tokens", type=_ints, default=(), metavar="ID,..",
                          help="token ids that end a completion (besides EOS)")
    output = p.add_argument_group("output")
    output.add_argument("--stream", action="store_true", help="print tokens as they arrive "
                        "('[i] ' marks request i when several run); with --json they go to "
                        "stderr, so stdout stays one JSON object per line")
    output.add_argument("--json", action="store_true", help="one JSON object per request, "
                        "in input order: prompt_ids, output_ids (new tokens), text, ...")
    output.add_argument("--echo-logprobs", action="store_true", help="also score the prompt: "
                        "prompt_logprobs, null then log p(token_t | tokens before t)")
    output.add_argument("--logprobs", action="store_true", help="new tokens' logprobs and top-8")
    hosts = p.add_argument_group("multi-host (or env " + ", ".join(MULTIHOST_ENV) + ")")
    hosts.add_argument("--coordinator", metavar="HOST:PORT")
    hosts.add_argument("--num-processes", type=int, metavar="N")
    hosts.add_argument("--process-id", type=int, metavar="I")
    return p


def _checkpoint_dir(args) -> Optional[str]:
    """The checkpoint directory to load, or None for random weights."""
    directory = args.checkpoint or DEFAULT_CHECKPOINT_DIR
    if any(os.path.exists(os.path.join(d, "tensor00000_000"))
           for d in (os.path.join(directory, "ckpt-0"), directory)):
        return directory
    if args.checkpoint is None:
        return None
    if not os.path.isdir(args.checkpoint):
        raise UsageError(f"--checkpoint {args.checkpoint}: no such directory")
    raise UsageError(f"--checkpoint {args.checkpoint}: no ckpt-0/ in it (expected "
                     f"{os.path.join(args.checkpoint, 'ckpt-0', 'tensor00000_000')})")


def _tokenizer(args, checkpoint: Optional[str], config):
    if args.tokenizer == BYTE_TOKENIZER or (args.tokenizer is None and checkpoint is None):
        tokenizer = ByteTokenizer()
    elif args.tokenizer is not None:
        if not os.path.isfile(args.tokenizer):
            raise UsageError(f"--tokenizer {args.tokenizer}: no such file")
        tokenizer = SentencePieceTokenizer(args.tokenizer)
    else:
        found = [p for p in (DEFAULT_TOKENIZER, os.path.join(checkpoint, DEFAULT_TOKENIZER))
                 if os.path.isfile(p)]
        if not found:
            raise UsageError(f"no tokenizer: pass --tokenizer FILE (Grok-1's {DEFAULT_TOKENIZER});"
                             f" looked for ./{DEFAULT_TOKENIZER} and "
                             f"{os.path.join(checkpoint, DEFAULT_TOKENIZER)}")
        tokenizer = SentencePieceTokenizer(found[0])
    if tokenizer.vocab_size > config.vocab_size:
        raise UsageError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's "
                         f"vocab_size is {config.vocab_size}: pass the matching --tokenizer")
    return tokenizer


def bs_per_device(batch_size: int, num_devices: int) -> float:
    """The runner's bs_per_device giving exactly `batch_size` slots (it takes int(bs * n))."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    per_device = batch_size / num_devices
    while int(per_device * num_devices) < batch_size:  # float rounding fell just short
        per_device = math.nextafter(per_device, math.inf)
    return per_device


def _config(args, is_demo: bool):
    """--config (else the demo's or Grok-1's) with --dtype and --moe applied."""
    if args.config is not None:
        try:
            config = load_config(args.config)
        except ValueError as e:
            raise UsageError(f"--config: {e}") from None
    else:
        config = demo.DEMO if is_demo else GROK_1
    if args.dtype != "auto":
        config = config.replace(fprop_dtype=args.dtype)
    elif jax.default_backend() == "cpu":
        config = config.replace(fprop_dtype="float32")
    if args.moe is not None:
        config = config.replace(moe_impl=args.moe)
    return config


def build_runner(args):
    """The initialized InferenceRunner for these arguments (weights loaded, steps compiled)."""
    checkpoint = _checkpoint_dir(args)
    is_demo = checkpoint is None and args.config is None
    config = _config(args, is_demo)
    tokenizer = _tokenizer(args, checkpoint, config)
    pad_sizes = args.pad_sizes or (demo.DEMO_PAD_SIZES if is_demo else
                                   (min(LARGEST_DEFAULT_PAD, config.sequence_len),))
    mesh = args.mesh or ((1, 1) if is_demo else (1, jax.local_device_count()))
    params = demo.demo_params(config) if is_demo else None
    if is_demo:
        print(demo.RANDOM_WEIGHTS_NOTICE.format(seed=demo.DEMO_SEED), file=sys.stderr)
    elif checkpoint is None:
        print(f"No checkpoint given: {args.config} runs with RANDOM weights (seed "
              f"{ModelRunner.rng_seed}); its output is meaningless.", file=sys.stderr)
    num_devices = math.prod(mesh) * math.prod(args.hosts)
    runner = InferenceRunner(
        ModelRunner(model=config, bs_per_device=bs_per_device(args.batch_size, num_devices),
                    checkpoint_path=checkpoint),
        name="local", load=checkpoint, local_mesh_config=tuple(mesh),
        between_hosts_config=tuple(args.hosts), pad_sizes=tuple(pad_sizes),
        tokenizer=tokenizer, params=params)
    try:
        runner.initialize()
    except CheckpointError as e:
        raise UsageError(f"checkpoint {checkpoint}: {e}") from None
    except ValueError as e:    # a mesh the devices can't make, bad pad sizes, ...
        raise UsageError(f"cannot start the model: {e}") from None
    return runner


def init_multihost(args) -> bool:
    """Joins the multi-process job the flags or GROK_*/JAX_* environment name; else False."""
    flags = (args.coordinator, args.num_processes, args.process_id)
    try:
        multihost = importlib.import_module("grok.parallel.multihost")
    except ModuleNotFoundError as e:
        if e.name != "grok.parallel.multihost":
            raise
        if any(v is not None for v in flags) or any(os.environ.get(n) for n in MULTIHOST_ENV):
            raise UsageError("multi-host support not available (grok.parallel.multihost is missing)")
        return False
    try:
        return bool(multihost.initialize(*flags))
    except ValueError as e:
        raise UsageError(f"multi-host: {e}") from None


@dataclasses.dataclass
class Item:
    """One input request: a Request, or the error that stopped it being one."""
    index: int
    label: str                      # the prompt as shown in text output
    request: Any = None             # grok.serving.requests.Request
    error: Optional[str] = None
    user_id: Optional[str] = None   # the record's own request_id, echoed in JSON output


def _read_records(path: str) -> list:
    """[(where, record or an Exception)] from a text, .jsonl or .json file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--input-file {path}: {e}") from None
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"--input-file {path}: not valid JSON: {e}") from None
        if not isinstance(data, list):
            raise UsageError(f"--input-file {path}: expected a JSON list of prompts or objects")
        return [(f"{path}[{i}]", record) for i, record in enumerate(data)]
    lines = [(f"{path}:{n}", line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    return [(where, _json_record(line)) for where, line in lines] if path.endswith(".jsonl") \
        else lines


def _json_record(line: str):
    """A JSONL line's value, or the ValueError that its request will report."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        return ValueError(f"not valid JSON: {e}")


def make_request(record, args, index: int):
    """A Request from a prompt string or an input object; ValueError names a bad field."""
    if isinstance(record, str):
        record = {"prompt": record}
    if not isinstance(record, dict):
        raise ValueError(f"expected a prompt string or an object, got {type(record).__name__}")
    unknown = sorted(set(record) - RECORD_KEYS)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; known: {sorted(RECORD_KEYS)}")
    if ("prompt" in record) == ("prompt_ids" in record):
        raise ValueError("give exactly one of 'prompt' (text) and 'prompt_ids' (token ids)")
    key, kind = ("prompt", str) if "prompt" in record else ("prompt_ids", list)
    if not isinstance(record[key], kind):
        raise ValueError(f"'{key}' must be a {kind.__name__}, got {type(record[key]).__name__}")
    fields = dict(temperature=args.temperature, nucleus_p=args.top_p, top_k=args.top_k,
                  max_len=args.max_len, rng_seed=(args.seed + index) % 2**32,
                  stop_tokens=tuple(args.stop_tokens), logprobs=args.logprobs,
                  echo=args.echo_logprobs, stream=args.stream)
    for field, name in RECORD_FIELDS.items():
        if field in record:
            fields[name] = record[field]
    return Request(prompt=record[key], request_id=str(index), **fields)


def read_items(args, default_prompt: str) -> list[Item]:
    """Every request of this run, in input order (bad ones carry their error)."""
    records = [(f"--prompt {i + 1}", p) for i, p in enumerate(args.prompt or [])]
    if args.input_file is not None:
        records += _read_records(args.input_file)
    if not records:
        records = [("default prompt", default_prompt)]
    items = []
    for index, (where, record) in enumerate(records):
        fields = record if isinstance(record, dict) else {
            "prompt": record if isinstance(record, str) else where}
        item = Item(index, str(fields.get("prompt", fields.get("prompt_ids", where))))
        user_id = fields.get("request_id", fields.get("id"))
        item.user_id = None if user_id is None else str(user_id)
        try:
            if isinstance(record, Exception):
                raise record
            item.request = make_request(record, args, index)
        except ValueError as e:
            item.error = f"{where}: {e}"
        items.append(item)
    return items


class ResultPrinter:
    """Prints results in input order as they complete, and streamed tokens as they arrive."""

    def __init__(self, args, items: list[Item]):
        self.args = args
        self.items = items
        self.results: dict[int, Any] = {}   # index -> Completion (or None for an input error)
        self.next_index = 0
        self.last_streamed: Optional[int] = None
        self.failed = False
        self.stream_file = sys.stderr if args.json else sys.stdout

    def on_token(self, index: int, event) -> None:
        out = self.stream_file
        if self.last_streamed != index:
            if len(self.items) == 1:
                out.write(f"Output for prompt: {self.items[0].label} ")
            else:
                out.write(("\n" if self.last_streamed is not None else "") + f"[{index}] ")
            self.last_streamed = index
        out.write(event.text)
        out.flush()

    def on_result(self, index: int, completion) -> None:
        self.results[index] = completion
        while self.next_index in self.results:
            self._print(self.items[self.next_index], self.results.pop(self.next_index))
            self.next_index += 1

    def finish(self) -> None:
        if self.last_streamed is not None:
            self.stream_file.write("\n")
            self.stream_file.flush()

    def _print(self, item: Item, completion) -> None:
        error = item.error or completion.error
        self.failed |= error is not None
        if self.args.json:
            print(json.dumps(result_dict(item, completion, error)), flush=True)
        elif error is not None:
            if self.last_streamed is not None:   # end the streamed line first
                print()
                self.last_streamed = None
            print(f"Error for prompt {item.index}: {error}", flush=True)
        elif not self.args.stream:
            print(f"Output for prompt: {item.label}", completion.text, flush=True)
        if not self.args.json and error is None:
            for name in ("prompt_logprobs", "logprobs"):
                values = getattr(completion, name)
                if values:
                    print(f"  {name}: {[v if v is None else round(v, 4) for v in values]}")


def result_dict(item: Item, completion, error: Optional[str]) -> dict:
    """The JSON object printed for one request."""
    out = {"index": item.index, **(completion.to_dict() if completion is not None else {
        "prompt_ids": [], "output_ids": [], "text": "", "finish_reason": "error"})}
    out["request_id"] = item.user_id if item.user_id is not None else str(item.index)
    if item.request is not None and isinstance(item.request.prompt, str):
        out["prompt"] = item.request.prompt
    if error is not None:
        out.update(error=error, finish_reason="error")
    return out


def serve_items(runner, items: list[Item], printer: ResultPrinter) -> None:
    """Sends every valid request at once and prints each result as its turn comes."""
    gen = runner.run()
    next(gen)
    for item in items:
        if item.request is None:
            printer.on_result(item.index, None)
    requests = [item.request for item in items if item.request is not None]
    out = gen.send(requests) if requests else None
    while out is not None:
        index = int(out.request_id)
        if isinstance(out, TokenEvent):
            printer.on_token(index, out)
        else:
            printer.on_result(index, out)
        out = next(gen)
    gen.close()   # multi-process: tells the other processes to stop
    printer.finish()


def interactive(runner, args, stdin) -> int:
    """A REPL: each line extends the conversation, the model continues it; /clear, /exit."""
    gen = runner.run()
    next(gen)
    budget = runner.config.sequence_len - args.max_len   # context tokens that fit with max_len
    if budget < 1:
        raise UsageError(f"--max-len {args.max_len} leaves no room for context in sequence_len "
                         f"{runner.config.sequence_len}")
    print("Interactive: each line continues the conversation; /clear forgets it, /exit quits.",
          file=sys.stderr)
    history, turn = "", 0
    while True:
        if stdin.isatty():
            print(">>> ", end="", file=sys.stderr, flush=True)
        line = stdin.readline()
        command = line.strip()
        if not line or command == "/exit":
            gen.close()
            return 0
        if command == "/clear":
            history = ""
            print("(conversation cleared)", file=sys.stderr)
            continue
        if not command:
            continue
        history = f"{history}\n{line.rstrip(chr(10))}" if history else line.rstrip("\n")
        ids = runner.tokenizer.encode(history)[-budget:]   # the most recent context that fits
        try:
            request = make_request({"prompt_ids": ids}, args, turn)
        except ValueError as e:
            print(f"Error: {e}", flush=True)
            continue
        turn += 1
        completion = gen.send(request)
        while isinstance(completion, TokenEvent):   # --stream
            print(completion.text, end="", flush=True)
            completion = next(gen)
        print("" if args.stream else completion.text, flush=True)
        if completion.error is not None:
            print(f"Error: {completion.error}", flush=True)
        history += completion.text


def run(args, runner=None, stdin=None) -> int:
    """Serves the requests `args` describe; returns the exit status (1 if any request failed)."""
    follower = jax.process_index() != 0   # process 0 owns the request stream
    items = [] if args.interactive or follower else read_items(args, REFERENCE_PROMPT)
    if runner is None:
        runner = build_runner(args)
    if follower:
        from grok.serving.multihost import follow

        follow(runner)
        return 0
    if args.interactive:
        return interactive(runner, args, stdin or sys.stdin)
    printer = ResultPrinter(args, items)
    serve_items(runner, items, printer)
    return 1 if printer.failed else 0


def main(argv: Optional[list] = None, runner=None, stdin=None) -> int:
    """run.py. `runner`: one built for these arguments (tests reuse it: no reload, no compile)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        init_multihost(args)
        if args.interactive and (args.prompt or args.input_file):
            raise UsageError("--interactive reads prompts from stdin: drop --prompt/--input-file")
        try:  # the sampling flags, checked once by the Request they will fill
            make_request({"prompt_ids": [0]}, args, 0)
        except ValueError as e:
            raise UsageError(f"bad sampling flag: {e}") from None
        return run(args, runner, stdin)
    except UsageError as e:
        print(f"run.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
