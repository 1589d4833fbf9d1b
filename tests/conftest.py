"""Test setup: JAX on CPU with 8 virtual devices (set before jax is imported), fixture paths,
and the fixtures several test modules share (the tiny model's weights and its reference)."""

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
# The engine's own compilation cache (grok.compile_cache, --compile-cache) is off unless a test
# turns it on: tests of it give it a folder of their own.
os.environ.setdefault("GROK_COMPILE_CACHE", "off")

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

# One persistent JAX compilation cache for the whole session, its subprocesses included (run.py,
# the multi-host drivers, the README example inherit these variables): the tiny model's
# programs are compiled by XLA once, and every later engine, server or process of the same
# shapes reads them back. It holds every program however fast it compiled and is removed at
# the end. A cached executable is the one XLA built for the same program (the key is the
# program, its devices and compile options), so outputs are unchanged. A
# JAX_COMPILATION_CACHE_DIR set by whoever runs the tests is used as it is.
CACHE_ENV = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    _session_cache = tempfile.mkdtemp(prefix="grok-tests-xla-")
    atexit.register(shutil.rmtree, _session_cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _session_cache
    for _name, _value in CACHE_ENV.items():
        os.environ.setdefault(_name, _value)


FIXTURE_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures", "tiny-grok-a")


@pytest.fixture(scope="session")
def fixture_dir():
    """The tiny-grok-a golden fixture; tests using it skip where ../shared is absent."""
    if not os.path.isdir(FIXTURE_DIR):
        pytest.skip("fixture ../shared/fixtures/tiny-grok-a is absent")
    return os.path.abspath(FIXTURE_DIR)


@pytest.fixture(scope="session")
def host_params():
    """The tiny model's random weights (tests/tiny_model.py), on the host."""
    from grok import checkpoint
    from tiny_model import SEED, tiny_config

    return checkpoint.random_params(tiny_config(), SEED)


@pytest.fixture(scope="session")
def reference(host_params):
    """The tiny model's full forward without a cache: every cached number's reference."""
    from tiny_model import FullForward, tiny_config

    return FullForward(tiny_config(), host_params)
