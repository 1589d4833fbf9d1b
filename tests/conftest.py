"""Test setup: JAX on CPU with 8 virtual devices (set before jax is imported), fixture paths,
and the fixtures several test modules share (the tiny model's weights and its reference)."""

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
# Tests measure compiles: the persistent compilation cache is off unless a test turns it on.
os.environ.setdefault("GROK_COMPILE_CACHE", "off")

import pytest  # noqa: E402

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
