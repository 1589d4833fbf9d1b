"""Multi-host launch: joining the job the flags or the GROK_* / JAX_* environment name."""

from __future__ import annotations

import importlib
import os

from grok.cli.flags import MULTIHOST_ENV
from grok.cli.model import UsageError


def init_multihost(args) -> bool:
    """Joins the multi-process job the flags or environment name; else False."""
    flags = (args.coordinator, args.num_processes, args.process_id)
    try:
        multihost = importlib.import_module("grok.parallel.multihost")
    except ModuleNotFoundError as e:
        if e.name != "grok.parallel.multihost":
            raise
        if any(v is not None for v in flags) or any(os.environ.get(n) for n in MULTIHOST_ENV):
            raise UsageError("multi-host support not available "
                             "(grok.parallel.multihost is missing)")
        return False
    try:
        return bool(multihost.initialize(*flags))
    except ValueError as e:
        raise UsageError(f"multi-host: {e}") from None


def follow(runner) -> None:
    """A follower process (not process 0): computes in lockstep with process 0's requests."""
    for name in ("grok.serving.multihost", "grok.parallel.multihost"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        if hasattr(module, "follow"):
            return module.follow(runner)
    raise UsageError("multi-host support not available (no follow() in grok)")
