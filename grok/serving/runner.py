"""InferenceRunner: the reference's facade, built from the engine and the host loop.

`InferenceRunner.initialize()` builds the `engine` (a grok.engine.engine.JaxEngine: the typed
device API the host loop drives) over a ModelRunner (grok.engine.runner) and compiles it;
`new_memory` and `sample_step` (the decode step over the whole cache; the engine's
`sample_step_fn(kv_len)` gives its shorter variants) keep the reference's names for the
compiled functions, and the engine's jitted prefill is named `prefill_memory`. `run()` is the
request generator (grok.serving.generator.serve; in a multi-process job, process 0's
grok.serving.multihost.serve_multihost), and `sample_from_model` wraps it as the reference
does.

Runtime choices are a RuntimeConfig (grok.runtime_config): `InferenceRunner.runtime`, with the
reference's arguments (`local_mesh_config`, `pad_sizes`, `bs_per_device`, ...) applied on top.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Optional, Sequence

import jax

from grok.engine.engine import JaxEngine
from grok.engine.runner import ModelRunner
from grok.parallel.multihost import check_consistent
from grok.runtime_config import RuntimeConfig
from grok.serving.generator import serve
from grok.serving.multihost import serve_multihost
from grok.serving.requests import Request
from grok.serving.results import Completion
from grok.serving.structured.tokenizers import build_in_background
from grok.tokenizer import Tokenizer, load_tokenizer

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class InferenceRunner:
    runner: ModelRunner
    name: str = "grok"
    load: Optional[str] = None          # checkpoint dir; overrides runner.checkpoint_path
    tokenizer_path: Optional[str] = None
    # The reference's arguments; None: the runtime config's (defaults (1, 1), (1, 1), (1024,)).
    local_mesh_config: Optional[Sequence[int]] = None
    between_hosts_config: Optional[Sequence[int]] = None
    pad_sizes: Optional[Sequence[int]] = None   # prompt buckets = RuntimeConfig.prefill_buckets
    tokenizer: Optional[Tokenizer] = None   # None: load_tokenizer(tokenizer_path)
    params: Optional[dict] = None       # host params to use instead of a checkpoint
    precompile: bool = True
    runtime: Optional[RuntimeConfig] = None  # None: runner.runtime, else RuntimeConfig()
    # Requests may carry a grammar (the HTTP server, grok.LLM, a run with constrained prompts):
    # build structured outputs' llguidance tokenizer in the background while the weights load
    # and compile, so the first constrained request finds it built. Otherwise the first
    # constrained request builds it (about 2 s at Grok-1's vocabulary) and a job that sends
    # none never pays for it.
    prebuild_grammar_tokenizer: bool = False

    def initialize(self):
        runner = self.runner
        if self.load:
            runner.checkpoint_path = self.load
        self.runtime = self._resolve_runtime()
        self.pad_sizes = self.runtime.prefill_buckets
        self.local_mesh_config = self.runtime.local_mesh_config
        self.between_hosts_config = self.runtime.between_hosts_config
        if self.tokenizer is None:
            if self.tokenizer_path is None:
                logger.warning("no tokenizer_path: text prompts use the byte tokenizer "
                               "(token-id prompts are unaffected)")
            self.tokenizer = load_tokenizer(self.tokenizer_path)
        if self.prebuild_grammar_tokenizer:
            build_in_background(self.tokenizer, runner.model.vocab_size, runner.model.eos_token)
        if jax.process_count() > 1:   # every process must compile the same programs
            # The architecture, every runtime field (flat, so a mismatch names the field), and
            # the tokenizer: every process applies stop strings with its own copy.
            check_consistent({"config": runner.model.to_dict(), **self.runtime.to_dict(),
                              "tokenizer": self.tokenizer.fingerprint})
        runner.runtime = self.runtime
        runner.initialize(None)
        self.params = runner.load_or_init(self.params)
        self.batch_size = runner.batch_size
        self.config = runner.model
        self.engine = JaxEngine(self.config, self.runtime, runner.mesh, runner.forward,
                                self.params, runner.param_shardings, self.batch_size)
        # The reference's names for the compiled functions.
        self.new_memory = self.engine.new_memory
        self.sample_step = self.engine.sample_step
        self.release_slot = self.engine.release_slot
        if self.precompile:   # what `run()` uses first, before any request (as the reference)
            self.engine.precompile()

    def _resolve_runtime(self) -> RuntimeConfig:
        """The runtime config with this runner's reference-style arguments applied."""
        runtime = self.runtime or self.runner.runtime or RuntimeConfig()
        changes = {name: tuple(value) for name, value in
                   (("local_mesh_config", self.local_mesh_config),
                    ("between_hosts_config", self.between_hosts_config),
                    ("prefill_buckets", self.pad_sizes)) if value is not None}
        if self.runner.bs_per_device is not None:
            changes["bs_per_device"] = self.runner.bs_per_device
        return runtime.replace(**changes)

    # ---- serving --------------------------------------------------------------------------
    def run(self):
        """The request generator (reference protocol); see grok.serving.generator.serve.

        In a multi-process job this is process 0's (grok.serving.multihost.serve_multihost): it
        publishes every step's admissions and cancels; the other processes run
        grok.serving.multihost.follow.
        """
        if jax.process_count() > 1:
            return serve_multihost(self)
        return serve(self)


def sample_from_model(server, prompt, max_len, temperature):
    """The reference's helper: one request through a generator from `InferenceRunner.run()`.

    Returns that request's Completion (a str: its text). Results of other requests still in
    flight on the same generator, if any, are passed over (the reference's callers have none).
    """
    next(server)
    request_id = f"sample_from_model-{next(_sample_ids)}"
    request = Request(prompt=prompt, temperature=temperature, top_p=1.0, seed=42,
                      max_tokens=max_len, request_id=request_id)
    out = server.send(request)
    while not (isinstance(out, Completion) and out.request_id == request_id):
        if out is None:
            raise RuntimeError("sample_from_model: the generator went idle without the result")
        logger.warning("sample_from_model: passing over a result for %s", out.request_id)
        out = next(server)
    return out


_sample_ids = itertools.count()
