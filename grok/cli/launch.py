"""Multi-host launch: joining the job the flags or the GROK_* / JAX_* environment name."""

from __future__ import annotations

from grok.loading import UsageError
from grok.parallel import multihost


def init_multihost(args) -> bool:
    """Joins the multi-process job the flags or environment name; else False."""
    try:
        return bool(multihost.initialize(args.coordinator, args.num_processes, args.process_id))
    except ValueError as e:
        raise UsageError(f"multi-host: {e}") from None
