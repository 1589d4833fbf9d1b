"""JAX's persistent compilation cache, on by default: a second start of the same model on the
same machine reads its compiled programs from disk instead of running XLA again.

`--compile-cache DIR` chooses the folder, `--compile-cache off` turns it off; the default is
$GROK_COMPILE_CACHE, else `grok/xla` under the user's cache directory ($XDG_CACHE_HOME, else
~/.cache). A JAX_COMPILATION_CACHE_DIR the user set is left as it is. Every program is kept,
however fast it compiled (the demo's take well under JAX's default 1 s threshold, and on a
busy machine they add up). A folder that cannot be made only costs the cache, with a notice.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

ENV = "GROK_COMPILE_CACHE"
OFF = "off"


def default_dir() -> str:
    """$GROK_COMPILE_CACHE, else <user cache dir>/grok/xla."""
    if os.environ.get(ENV):
        return os.environ[ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "grok", "xla")


def enable(directory: Optional[str], quiet: bool = False) -> Optional[str]:
    """Turns the cache on in `directory` (None: the default; "off": leaves it off). Returns the
    folder in use, or None."""
    import jax

    directory = default_dir() if directory is None else directory
    if directory == OFF:
        return None
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        if not quiet:
            print(f"Compilation cache off: cannot make {directory}: {e.strerror}",
                  file=sys.stderr)
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
