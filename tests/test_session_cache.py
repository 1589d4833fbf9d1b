"""The session's persistent compilation cache (tests/conftest.py) is in effect: a program XLA
compiled once is read back, in this process and in a subprocess (run.py, the multi-host
drivers and the README example inherit it the same way). Without it the suite compiles every
tiny-model program again in each module and process, and no longer fits CI's time."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp

PROGRAM = """
import jax, jax.numpy as jnp
def scaled_sum_of_squares(x):
    return jnp.sum(x * x) * 3.0
lowered = jax.jit(scaled_sum_of_squares).lower(jnp.ones((5, 7)))
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None)
lowered.compile()
print("HITS", len(hits))
"""


def _hits_while(compile_once) -> int:
    hits = []

    def on_event(event, **_):
        if event == "/jax/compilation_cache/cache_hits":
            hits.append(event)
    jax.monitoring.register_event_listener(on_event)
    try:
        compile_once()
    finally:
        jax.monitoring.unregister_event_listener(on_event)
    return len(hits)


def test_a_compiled_program_is_read_back_here_and_in_a_subprocess():
    directory = os.environ["JAX_COMPILATION_CACHE_DIR"]
    assert jax.config.jax_compilation_cache_dir == directory

    x = jnp.ones((5, 7))

    def compile_once():
        def scaled_sum_of_squares(x):   # a new function each time: jax's in-memory caches miss
            return jnp.sum(x * x) * 3.0
        jax.jit(scaled_sum_of_squares).lower(x).compile()
    _hits_while(compile_once)                       # compiled now, or read back from an earlier run
    assert _hits_while(compile_once) == 1
    assert any(name.startswith("jit_scaled_sum_of_squares") for name in os.listdir(directory))

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "HITS 1" in run.stdout, run.stdout + run.stderr[-2000:]
