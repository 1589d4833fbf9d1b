"""The command line behind `run.py`, `python -m grok` and the `grok` command.

One module per concept: `flags` (the parser), `inputs` (requests from flags and files),
`output` (printing, JSON, the run summary), `repl` (`--interactive`), `launch` (multi-host),
`app` (`main`: putting them together; `grok run|serve|bench`). Finding the checkpoint, config
and tokenizer and loading the model is the library's (grok.loading), shared with grok.LLM.
"""

from grok.cli.app import build_runner, default_slots, grok_main, main, run, serve_items
from grok.cli.flags import (BYTE_TOKENIZER, DEFAULT_CHECKPOINT_DIR, DEFAULT_MAX_SLOTS,
                            DEFAULT_TOKENIZER, REFERENCE_PROMPT, build_parser)
from grok.cli.inputs import Item, make_request, read_items
from grok.cli.launch import init_multihost
from grok.loading import UsageError, bs_per_device, load_model, ModelOptions
from grok.cli.output import ResultPrinter, RunStats, result_dict

__all__ = ["BYTE_TOKENIZER", "DEFAULT_CHECKPOINT_DIR", "DEFAULT_MAX_SLOTS", "DEFAULT_TOKENIZER",
           "REFERENCE_PROMPT", "Item", "ModelOptions", "ResultPrinter", "RunStats",
           "UsageError", "build_parser", "build_runner", "bs_per_device", "default_slots",
           "grok_main", "init_multihost", "load_model", "main", "make_request", "read_items",
           "result_dict", "run", "serve_items"]
