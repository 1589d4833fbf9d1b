"""Benchmarks, one per file, run as `python -m grok.bench NAME [flags]` (see grok.bench)."""
