"""The command line behind `run.py`, `python -m grok` and the `grok` command.

One module per concept: `flags` (the parser), `model` (finding the checkpoint, config and
tokenizer; loading and compiling, timed), `inputs` (requests from flags and files), `output`
(printing, JSON, stop strings, the run summary), `repl` (`--interactive`), `launch`
(multi-host), `app` (`main`: putting them together; `grok run|serve|bench`).
"""

from grok.cli.app import build_runner, default_slots, grok_main, main, run, serve_items
from grok.cli.flags import (BYTE_TOKENIZER, DEFAULT_CHECKPOINT_DIR, DEFAULT_MAX_SLOTS,
                            DEFAULT_TOKENIZER, REFERENCE_PROMPT, build_parser)
from grok.cli.inputs import Item, make_request, read_items, request_seed
from grok.cli.launch import init_multihost
from grok.cli.model import UsageError, bs_per_device, load_model, ModelOptions
from grok.cli.output import ResultPrinter, RunStats, result_dict

__all__ = ["BYTE_TOKENIZER", "DEFAULT_CHECKPOINT_DIR", "DEFAULT_MAX_SLOTS", "DEFAULT_TOKENIZER",
           "REFERENCE_PROMPT", "Item", "ModelOptions", "ResultPrinter", "RunStats",
           "UsageError", "build_parser", "build_runner", "bs_per_device", "default_slots",
           "grok_main", "init_multihost", "load_model", "main", "make_request", "read_items",
           "request_seed", "result_dict", "run", "serve_items"]
