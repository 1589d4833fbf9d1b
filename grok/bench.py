"""`python -m grok.bench [NAME] [flags]`: runs the benchmark NAME from grok/benchmarks/.

NAME is one of BENCHMARKS (default `decode`, so `python -m grok.bench --mesh 1,8 ...` measures
decode as before); `python -m grok.bench NAME --help` lists that benchmark's flags. Each
benchmark module has `main(argv) -> dict` and prints its own table.
"""

from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

BENCHMARKS = {
    "decode": "grok.benchmarks.decode",   # load, compile, prefill and decode of the runner
    "sampling": "grok.benchmarks.sampling",   # sample_token: greedy vs top-k/top-p slots
    "interleave": "grok.benchmarks.interleave",   # stream token gaps while a long prompt prefills
    "prefill_batch": "grok.benchmarks.prefill_batch",   # N prompts in one prefill call vs one each
    "prefix": "grok.benchmarks.prefix",   # time to first token with and without the prefix cache
    "serve": "grok.benchmarks.serving",   # an OpenAI-compatible server under load
    "structured": "grok.benchmarks.structured",   # decode steps with grammar-constrained rows
    "gpu_hlo": "grok.benchmarks.gpu_hlo",   # the decode step as XLA:GPU compiles it (no GPU)
    "spec": "grok.benchmarks.spec",   # speculative decoding (n-gram drafts) vs off
}
DEFAULT = "decode"


def main(argv: Optional[Sequence[str]] = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    name = argv.pop(0) if argv and argv[0] in BENCHMARKS else DEFAULT
    if argv[:1] in (["-h"], ["--help"]) and name == DEFAULT and not argv[1:]:
        print(__doc__.strip() + "\n\nBenchmarks: " + ", ".join(BENCHMARKS) + "\n")
    return importlib.import_module(BENCHMARKS[name]).main(argv)


if __name__ == "__main__":
    main()
