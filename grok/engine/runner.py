"""ModelRunner (mesh, shardings, weights) and InferenceRunner (the reference-shaped facade).

The reference's roles and names: `ModelRunner.initialize(init_data, local_mesh_config,
between_hosts_config)` builds the (data, model) mesh; `load_or_init` restores the checkpoint
with the partition rules; `InferenceRunner.initialize()` builds the `engine` (a
grok.engine.engine.JaxEngine: the typed device API the host loop drives) and compiles it;
`new_memory` and `sample_step` (the decode step over the whole cache; the engine's
`sample_step_fn(kv_len)` gives its shorter variants) keep the reference's names for the
compiled functions, and the engine's jitted prefill is named `prefill_memory`; `run()` is the request generator (grok.serving), and `sample_from_model` wraps it
as the reference does.

Runtime choices (mesh, slots, buckets, MoE implementation, dtype) are a RuntimeConfig
(grok.runtime_config): `InferenceRunner.runtime` / `ModelRunner.runtime`, with the
reference's arguments (`local_mesh_config`, `pad_sizes`, `bs_per_device`, ...) applied on top.

Glossary: B slots, T prompt bucket, S sequence_len, V vocabulary, A reported alternatives.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from grok import checkpoint
from grok.config import LanguageModelConfig
from grok.engine.engine import JaxEngine
from grok.engine.state import DecodeState, pack_output, unpack_output  # noqa: F401 (re-exported)
from grok.model.transformer import abstract_params, build_forward
from grok.ops.platform import compute_platform
from grok.parallel import sharding
from grok.runtime_config import RuntimeConfig, runtime_for

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ModelRunner:
    model: LanguageModelConfig
    bs_per_device: Optional[float] = None   # None: runtime.bs_per_device (2.0, the reference's)
    checkpoint_path: Optional[str] = None
    rng_seed: int = 42
    runtime: Optional[RuntimeConfig] = None  # None: RuntimeConfig(); resolved by initialize

    def initialize(self, init_data: Any = None, local_mesh_config=None,
                   between_hosts_config=None, devices=None):
        """Builds the mesh and shardings; init_data is accepted for reference compatibility.

        Mesh arguments given here (or bs_per_device) override the runtime config's.
        """
        del init_data
        changes = {name: tuple(value) for name, value in
                   (("local_mesh_config", local_mesh_config),
                    ("between_hosts_config", between_hosts_config)) if value is not None}
        if self.bs_per_device is not None:
            changes["bs_per_device"] = self.bs_per_device
        self.runtime = runtime = runtime_for(self.model, self.runtime).replace(**changes)
        self.mesh = sharding.make_mesh(runtime.local_mesh_config, runtime.between_hosts_config,
                                       devices)
        num_devices = self.mesh.devices.size
        self.batch_size = max(1, int(runtime.bs_per_device * num_devices))
        forward = build_forward(self.model, runtime)

        platform = self.mesh.devices.flat[0].platform

        def forward_on_mesh(*args):
            with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh), \
                    compute_platform(platform):       # the mesh's, not the host's backend
                return forward(*args)

        self.forward = forward_on_mesh
        self.param_shardings = sharding.param_shardings(abstract_params(self.model), self.mesh)
        logger.info("mesh %s, %d slots", dict(self.mesh.shape), self.batch_size)

    def load_or_init(self, params: Optional[dict] = None) -> dict:
        """Restores `checkpoint_path`, places given host params, or makes random weights."""
        if params is None and self.checkpoint_path:
            params = checkpoint.load_checkpoint(self.checkpoint_path, self.model,
                                                self.param_shardings)
        else:
            if params is None:
                logger.warning("no checkpoint given: using random weights (seed %d)", self.rng_seed)
                params = checkpoint.random_params(self.model, self.rng_seed)
            params = jax.device_put(params, self.param_shardings)
        return self._embeddings_in_activation_dtype(params)

    def _embeddings_in_activation_dtype(self, params: dict) -> dict:
        """Casts the embedding table once, so no step re-reads it as float32 (same numbers:
        the model casts it to the activation dtype on every use)."""
        embed = params["language_model/in_out_embed"]["embeddings"]
        dtype = jnp.dtype(self.runtime.activation_dtype)
        if embed.dtype != dtype:
            cast = jax.jit(lambda a: a.astype(dtype), out_shardings=embed.sharding)
            params = {**params, "language_model/in_out_embed": {"embeddings": cast(embed)}}
        return params


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
    tokenizer: Any = None               # an object with encode/decode; else from tokenizer_path
    params: Optional[dict] = None       # host params to use instead of a checkpoint
    precompile: bool = True
    runtime: Optional[RuntimeConfig] = None  # None: runner.runtime, else RuntimeConfig()

    def initialize(self):
        from grok.tokenizer import load_tokenizer

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
        if jax.process_count() > 1:   # every process must compile the same programs
            from grok.parallel.multihost import check_consistent

            # The architecture, every runtime field (flat, so a mismatch names the field), and
            # the tokenizer: every process applies stop strings with its own copy.
            check_consistent({"config": runner.model.to_dict(), **self.runtime.to_dict(),
                              "tokenizer": getattr(self.tokenizer, "fingerprint", None)})
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
        runtime = runtime_for(self.runner.model, self.runtime or self.runner.runtime)
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
            from grok.serving.multihost import serve_multihost

            return serve_multihost(self)
        from grok.serving.generator import serve

        return serve(self)


def sample_from_model(server, prompt, max_len, temperature):
    """The reference's helper: one request through a generator from `InferenceRunner.run()`.

    Returns that request's Completion (a str: its text). Results of other requests still in
    flight on the same generator, if any, are passed over (the reference's callers have none).
    """
    from grok.serving.requests import Completion, Request

    next(server)
    request_id = f"sample_from_model-{next(_sample_ids)}"
    request = Request(prompt=prompt, temperature=temperature, nucleus_p=1.0, rng_seed=42,
                      max_len=max_len, request_id=request_id)
    out = server.send(request)
    while not (isinstance(out, Completion) and out.request_id == request_id):
        if out is None:
            raise RuntimeError("sample_from_model: the generator went idle without the result")
        logger.warning("sample_from_model: passing over a result for %s", out.request_id)
        out = next(server)
    return out


_sample_ids = itertools.count()
