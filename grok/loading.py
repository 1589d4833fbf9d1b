"""Model discovery and loading, for grok.LLM and the command line alike: from a
`ModelOptions` (the flags, or `grok.LLM`'s arguments) to a running model: which checkpoint,
which config, which tokenizer, how many slots; then load and compile, timed, with a progress
line.

Discovery, in order: `--checkpoint DIR` (else ./checkpoints, else the checkpoints/ beside
run.py, else the embedded demo); `--config` (else DIR/config.json, else Grok-1); `--tokenizer`
(else ./tokenizer.model or DIR/tokenizer.model; for a model whose vocabulary is exactly the
byte tokenizer's 259 ids, like the demo, DIR/tokenizer.model or else the byte tokenizer). Every problem is a `UsageError`
naming the flag to change.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import threading
import time
from typing import Optional

import jax

from grok import compile_cache, demo
from grok.checkpoint import CheckpointError, ConfigMismatchError
from grok.checkpoint.preflight import (check_config, check_tokenizer_file, check_vocabulary,
                                       load_config_file)
from grok.config import GROK_1, LanguageModelConfig
from grok.engine.runner import ModelRunner
from grok.serving.runner import InferenceRunner
from grok.runtime_config import RuntimeConfig
from grok.tokenizer import ByteTokenizer, SentencePieceTokenizer

DEFAULT_CHECKPOINT_DIR = "checkpoints"      # the reference's CKPT_PATH
DEFAULT_TOKENIZER = "tokenizer.model"       # the reference's tokenizer_path
CONFIG_FILE = "config.json"                 # DIR/config.json: the checkpoint's model config
BYTE_TOKENIZER = "bytes"                    # --tokenizer bytes: grok.tokenizer.ByteTokenizer
LARGEST_DEFAULT_PAD = 1024                  # the reference's pad_sizes=(1024,)
# Default slots = min(requests, this): 8 slots of Grok-1's KV cache (~2 GB each at 8192
# tokens) fit beside the weights on eight 80 GB GPUs, and 8 covers a typical prompt file.
DEFAULT_MAX_SLOTS = 8
REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROK_1_SOURCE = "Grok-1 (built in)"
PROGRESS_INTERVAL_S = 1.0     # how often the compile progress line is redrawn on a terminal


class UsageError(ValueError):
    """A problem with what the user gave (flags or grok.LLM's arguments, and the files they
    name): the command line prints it and exits with status 2."""


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """What the model flags say (None: discover / default)."""

    checkpoint: Optional[str] = None
    config: Optional[str] = None
    tokenizer: Optional[str] = None
    dtype: str = "auto"
    moe: Optional[str] = None
    mesh: Optional[tuple] = None
    hosts: tuple = (1, 1)
    slots: int = 1
    pad_sizes: Optional[tuple] = None
    prefix_cache_tokens: Optional[int] = None
    speculative_tokens: int = 0
    speculative_method: str = "ngram"
    quiet: bool = False
    compile_cache: Optional[str] = None   # a folder, "off", or None: the default folder
    max_model_len: Optional[int] = None   # context (KV cache) length; None: the config's
    # requests may carry a grammar: see InferenceRunner.prebuild_grammar_tokenizer
    prebuild_grammar_tokenizer: bool = False

    @classmethod
    def from_args(cls, args, slots: int, prebuild_grammar_tokenizer: bool = False
                  ) -> "ModelOptions":
        return cls(checkpoint=args.checkpoint, config=args.config, tokenizer=args.tokenizer,
                   dtype=args.dtype, moe=args.moe, mesh=args.mesh, hosts=tuple(args.hosts),
                   slots=slots, pad_sizes=args.pad_sizes,
                   prefix_cache_tokens=args.prefix_cache_tokens, quiet=args.quiet,
                   compile_cache=args.compile_cache, speculative_tokens=args.speculative_tokens,
                   speculative_method=args.speculative_method,
                   max_model_len=args.max_model_len,
                   prebuild_grammar_tokenizer=prebuild_grammar_tokenizer)


@dataclasses.dataclass
class StartupTimes:
    load_s: Optional[float] = None       # mesh, weights read and placed
    compile_s: Optional[float] = None    # every prefill bucket and the decode step


def _has_checkpoint(directory: str) -> bool:
    return any(os.path.exists(os.path.join(d, "tensor00000_000"))
               for d in (os.path.join(directory, "ckpt-0"), directory))


def find_checkpoint(checkpoint: Optional[str]) -> Optional[str]:
    """The checkpoint directory to load, or None for random weights."""
    if checkpoint is not None:
        if _has_checkpoint(checkpoint):
            return checkpoint
        if not os.path.isdir(checkpoint):
            raise UsageError(f"--checkpoint {checkpoint}: no such directory")
        raise UsageError(f"--checkpoint {checkpoint}: no ckpt-0/ in it (expected "
                         f"{os.path.join(checkpoint, 'ckpt-0', 'tensor00000_000')})")
    for directory in (DEFAULT_CHECKPOINT_DIR, os.path.join(REPO_DIR, DEFAULT_CHECKPOINT_DIR)):
        if _has_checkpoint(directory):
            return directory
    return None


def _config_beside(checkpoint: str) -> Optional[str]:
    """DIR/config.json (or, when DIR is the ckpt-0 directory itself, the one above it)."""
    for directory in (checkpoint, os.path.dirname(os.path.abspath(checkpoint))):
        path = os.path.join(directory, CONFIG_FILE)
        if os.path.isfile(path):
            return path
        if _has_checkpoint(os.path.join(directory, "ckpt-0")) or directory != checkpoint:
            break
    return None


def resolve_config(options: ModelOptions, checkpoint: Optional[str]
                   ) -> tuple[LanguageModelConfig, str]:
    """(the model config, where it came from)."""
    path = options.config
    if path is None and checkpoint is not None:
        path = _config_beside(checkpoint)
    if path is not None:
        try:
            config = load_config_file(path)
        except ValueError as e:
            flag = "--config" if options.config is not None else f"{path} (found beside the " \
                "checkpoint; pass --config FILE to use another)"
            raise UsageError(f"{flag}: {e}") from None
        source = path
    elif checkpoint is None:
        config, source = demo.DEMO, "the demo"
    else:
        config, source = GROK_1, GROK_1_SOURCE
    return config, source


def with_context(config: LanguageModelConfig, max_model_len: Optional[int],
                 random_weights: bool) -> LanguageModelConfig:
    """The config with --max-model-len as its sequence_len (the context: prompt plus output,
    the KV cache's length). Trained weights take at most their config's length (positions
    past it were never trained); random weights (the demo) take any."""
    if max_model_len is None:
        return config
    if isinstance(max_model_len, bool) or not isinstance(max_model_len, int) or max_model_len < 2:
        raise UsageError(f"--max-model-len must be an int >= 2, got {max_model_len!r}")
    if not random_weights and max_model_len > config.sequence_len:
        raise UsageError(f"--max-model-len {max_model_len} is longer than the model's "
                         f"sequence_len {config.sequence_len}")
    return config.replace(sequence_len=max_model_len)


# RuntimeConfig field -> the flag that sets it, so its errors name the flag.
_RUNTIME_FLAGS = {"activation_dtype": "--dtype", "moe_impl": "--moe", "local_mesh_config": "--mesh",
                  "between_hosts_config": "--hosts", "bs_per_device": "--batch-size",
                  "prefill_buckets": "--pad-sizes", "prefix_cache_tokens": "--prefix-cache-tokens",
                  "speculative_tokens": "--speculative-tokens",
                  "speculative_method": "--speculative-method"}


def resolve_runtime(options: ModelOptions, config: LanguageModelConfig, is_demo: bool
                    ) -> RuntimeConfig:
    """How to run it: --dtype (auto: float32 on CPU, where it is faster and closer to the
    reference, else bfloat16), --moe, --mesh, --hosts, slots, --pad-sizes."""
    base = RuntimeConfig()
    dtype = options.dtype
    if dtype == "auto":
        dtype = "float32" if jax.default_backend() == "cpu" else base.activation_dtype
    pad_sizes = options.pad_sizes or (demo.DEMO_PAD_SIZES if is_demo else
                                      (min(LARGEST_DEFAULT_PAD, config.sequence_len),))
    mesh = options.mesh or ((1, 1) if is_demo else (1, jax.local_device_count()))
    num_devices = math.prod(mesh) * math.prod(options.hosts)
    changes = dict(activation_dtype=dtype, moe_impl=options.moe or base.moe_impl,
                   local_mesh_config=tuple(mesh), between_hosts_config=tuple(options.hosts),
                   bs_per_device=bs_per_device(options.slots, num_devices),
                   prefill_buckets=tuple(pad_sizes), speculative_tokens=options.speculative_tokens,
                   speculative_method=options.speculative_method)
    if options.prefix_cache_tokens is not None:
        changes["prefix_cache_tokens"] = options.prefix_cache_tokens
    try:
        return base.replace(**changes)
    except ValueError as e:
        message = str(e)
        for field, flag in _RUNTIME_FLAGS.items():
            message = message.replace(f"RuntimeConfig.{field}", flag)
        raise UsageError(message) from None


def _sentencepiece(path: str, flag: str):
    try:
        check_tokenizer_file(path)
    except ValueError as e:
        raise UsageError(f"{flag}: {e}") from None
    try:
        return SentencePieceTokenizer(path)
    except Exception as e:  # sentencepiece raises RuntimeError/OSError with C++ text
        raise UsageError(f"{flag} {path}: not a SentencePiece model file "
                         f"({type(e).__name__}: {str(e).strip()[:200]})") from None


def resolve_tokenizer(options: ModelOptions, checkpoint: Optional[str],
                      config: LanguageModelConfig):
    """The tokenizer object (see the module docstring for the search order)."""
    byte_vocab = config.vocab_size == ByteTokenizer.vocab_size
    if options.tokenizer == BYTE_TOKENIZER:
        tokenizer = ByteTokenizer()
    elif options.tokenizer is not None:
        if not os.path.isfile(options.tokenizer):
            raise UsageError(f"--tokenizer {options.tokenizer}: no such file")
        tokenizer, source = _sentencepiece(options.tokenizer, "--tokenizer"), options.tokenizer
    else:
        beside = [os.path.join(checkpoint, DEFAULT_TOKENIZER)] if checkpoint is not None else []
        # ./tokenizer.model is Grok-1's (the reference's place); a byte-vocabulary model
        # takes only a tokenizer shipped beside its own checkpoint
        places = beside if byte_vocab else [DEFAULT_TOKENIZER] + beside
        found = [p for p in places if os.path.isfile(p)]
        if found:
            tokenizer, source = _sentencepiece(found[0], "tokenizer"), found[0]
        elif byte_vocab:
            tokenizer = ByteTokenizer()
            if checkpoint is not None and not options.quiet:
                print(f"Tokenizer: bytes (the model's vocabulary is the byte tokenizer's "
                      f"{ByteTokenizer.vocab_size} ids)", file=sys.stderr)
        else:
            raise UsageError(f"no tokenizer: pass --tokenizer FILE (Grok-1's "
                             f"{DEFAULT_TOKENIZER}); looked for " + " and ".join(places))
    if isinstance(tokenizer, SentencePieceTokenizer):
        try:
            check_vocabulary(tokenizer.vocab_size, config.vocab_size, source)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if isinstance(tokenizer, ByteTokenizer) and not byte_vocab:
        raise UsageError(f"the byte tokenizer knows {ByteTokenizer.vocab_size} ids but the model "
                         f"has {config.vocab_size}: its text would be mostly empty. Pass "
                         f"--tokenizer FILE (the model's SentencePiece file)")
    return tokenizer


def bs_per_device(batch_size: int, num_devices: int) -> float:
    """The runner's bs_per_device giving exactly `batch_size` slots (it takes int(bs * n))."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    per_device = batch_size / num_devices
    while int(per_device * num_devices) < batch_size:  # float rounding fell just short
        per_device = math.nextafter(per_device, math.inf)
    return per_device


class _CompileProgress:
    """'compiling ... N s' on stderr while XLA compiles (redrawn each second on a terminal)."""

    def __init__(self, what: str, quiet: bool):
        self.what, self.quiet = what, quiet
        self.done = threading.Event()
        self.tty = sys.stderr.isatty()

    def __enter__(self):
        self.start = time.perf_counter()
        if self.quiet:
            return self
        print(f"Compiling {self.what} ...", end="" if self.tty else "\n", file=sys.stderr,
              flush=True)
        if self.tty:
            threading.Thread(target=self._tick, daemon=True).start()
        return self

    def _tick(self):
        while not self.done.wait(PROGRESS_INTERVAL_S):
            elapsed = time.perf_counter() - self.start
            print(f"\rCompiling {self.what} ... {elapsed:.0f} s", end="", file=sys.stderr,
                  flush=True)

    def __exit__(self, *exc):
        self.done.set()
        self.elapsed = time.perf_counter() - self.start
        if not self.quiet and exc[0] is None:
            print(f"{chr(13) if self.tty else ''}Compiled {self.what} in {self.elapsed:.1f} s",
                  file=sys.stderr, flush=True)
        return False


def _notice(options: ModelOptions, text: str) -> None:
    if not options.quiet:
        print(text, file=sys.stderr, flush=True)


def load_model(options: ModelOptions) -> tuple[InferenceRunner, StartupTimes]:
    """The initialized InferenceRunner (weights loaded, steps compiled) and how long each took."""
    compile_cache.enable(options.compile_cache, options.quiet)
    checkpoint = find_checkpoint(options.checkpoint)
    is_demo = checkpoint is None and options.config is None
    config, source = resolve_config(options, checkpoint)
    config = with_context(config, options.max_model_len, random_weights=checkpoint is None)
    try:    # a config made in Python meets what a config.json must (before any allocation)
        check_config(config)
    except ValueError as e:
        raise UsageError(f"model config ({source}): {e}") from None
    tokenizer = resolve_tokenizer(options, checkpoint, config)
    runtime = resolve_runtime(options, config, is_demo)
    params = demo.demo_params(config) if is_demo else None
    if is_demo:
        _notice(options, demo.RANDOM_WEIGHTS_NOTICE.format(seed=demo.DEMO_SEED))
    elif checkpoint is None:
        _notice(options, f"No checkpoint given: {options.config} runs with RANDOM weights "
                f"(seed {ModelRunner.rng_seed}); its output is meaningless.")
    elif options.config is None and source != GROK_1_SOURCE:
        _notice(options, f"Model config: {source}")
    runner = InferenceRunner(ModelRunner(model=config, checkpoint_path=checkpoint),
                             name="local", load=checkpoint, tokenizer=tokenizer, params=params,
                             precompile=False, runtime=runtime,
                             prebuild_grammar_tokenizer=options.prebuild_grammar_tokenizer)
    times = StartupTimes()
    start = time.perf_counter()
    try:
        runner.initialize()
    except CheckpointError as e:
        hint = ""
        if isinstance(e, ConfigMismatchError):   # the files are another model's: say which config we used
            beside = os.path.join(checkpoint, CONFIG_FILE)
            hint = (f"\n  (model config used: {source}; " +
                    ("if the checkpoint is another model, pass its --config FILE"
                     if options.config is None else "is --config this checkpoint's config?") +
                    f" Without --config, {beside} is used when present.)")
        raise UsageError(f"checkpoint {checkpoint}: {e}{hint}") from None
    except ValueError as e:    # a mesh the devices can't make, bad pad sizes, ...
        raise UsageError(f"cannot start the model: {e}") from None
    times.load_s = time.perf_counter() - start
    buckets = ",".join(map(str, runner.pad_sizes))
    slots = f"{runner.batch_size} slot" + ("s" if runner.batch_size > 1 else "")
    with _CompileProgress(f"prefill (prompt buckets {buckets}) and decode ({slots})",
                          options.quiet) as progress:
        runner.engine.precompile()   # InferenceRunner(precompile=False) left it to us, to time it
    times.compile_s = progress.elapsed
    return runner, times

