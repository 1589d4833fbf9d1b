"""Benchmarks, one per file, run as `python -m grok.bench NAME [flags]` (see grok.bench)."""

from __future__ import annotations

import json
from typing import Optional


def save_report(report: dict, path: Optional[str]) -> None:
    """Writes a benchmark's report as JSON to `path` (its --json flag; None: nowhere)."""
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
