"""ModelRunner: the reference's device-side runner (mesh, shardings, weights).

The reference's roles and names: `ModelRunner.initialize(init_data, local_mesh_config,
between_hosts_config)` builds the (data, model) mesh; `load_or_init` restores the checkpoint
with the partition rules. The reference's facade over it, `InferenceRunner` (the engine, the
request generator `run()` and `sample_from_model`), is the serving layer's:
grok.serving.runner.

Runtime choices (mesh, slots, buckets, MoE implementation, dtype) are a RuntimeConfig
(grok.runtime_config): `ModelRunner.runtime`, with the reference's arguments
(`local_mesh_config`, `bs_per_device`, ...) applied on top.

Glossary: B slots, T prompt bucket, S sequence_len, V vocabulary, A reported alternatives.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional

import jax
import jax.numpy as jnp

from grok import checkpoint
from grok.config import LanguageModelConfig
from grok.model.transformer import abstract_params, build_forward
from grok.ops.platform import compute_platform
from grok.parallel import sharding
from grok.runtime_config import RuntimeConfig

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
        self.runtime = runtime = (self.runtime or RuntimeConfig()).replace(**changes)
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
