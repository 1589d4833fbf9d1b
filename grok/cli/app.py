"""`run.py` / `grok run`: flags -> requests -> model -> printed results, and the `grok`
command (`grok run`, `grok serve`, `grok bench`) that `python -m grok` also runs."""

from __future__ import annotations

import logging
import sys
from typing import Optional, Sequence

import jax

from grok.cli.flags import DEFAULT_MAX_SLOTS, REFERENCE_PROMPT, build_parser
from grok.cli.inputs import Item, make_request, read_items
from grok.cli.launch import init_multihost
from grok.loading import ModelOptions, StartupTimes, UsageError, load_model
from grok.serving.interrupt import exit_on_interrupt
from grok.cli.output import ResultPrinter, RunStats
from grok.cli.repl import Repl
from grok.serving.multihost import follow
from grok.serving.structured.fields import constraint_of
from grok.serving.results import TokenEvent

SUBCOMMANDS = {"run": "generate from prompts, a file or a REPL (the default)",
               "serve": "an OpenAI-compatible HTTP server",
               "bench": "benchmarks: grok bench NAME --help"}


def default_slots(args, items: list[Item]) -> int:
    """--batch-size, else min(valid requests, DEFAULT_MAX_SLOTS) (1 for the REPL; the cap in
    a multi-process job, whose followers do not see the requests)."""
    if args.batch_size is not None:
        return args.batch_size
    if args.interactive:
        return 1
    if jax.process_count() > 1:
        return DEFAULT_MAX_SLOTS
    return max(1, min(DEFAULT_MAX_SLOTS, sum(item.request is not None for item in items)))


def may_constrain(args, items: list[Item]) -> bool:
    """Whether a request of this run may carry a grammar: a valid input's, or (--interactive)
    every turn's from the flags; in a multi-process job, always (the other processes, which
    admit every request too, do not see the inputs)."""
    if jax.process_count() > 1:
        return True
    if args.interactive:
        return constraint_of(make_request({"prompt": "x"}, args, 0)) is not None
    return any(item.request is not None and constraint_of(item.request) is not None
               for item in items)


def build_runner(args, slots: Optional[int] = None, times: Optional[StartupTimes] = None,
                 prebuild_grammar_tokenizer: bool = False):
    """The initialized InferenceRunner for these arguments (weights loaded, steps compiled).
    slots: default --batch-size, else DEFAULT_MAX_SLOTS (a server's; `run` passes its own);
    prebuild_grammar_tokenizer: requests may carry a grammar (see
    grok.serving.runner.InferenceRunner)."""
    slots = slots if slots is not None else (args.batch_size or DEFAULT_MAX_SLOTS)
    runner, measured = load_model(ModelOptions.from_args(args, slots,
                                                         prebuild_grammar_tokenizer))
    if times is not None:
        times.load_s, times.compile_s = measured.load_s, measured.compile_s
    return runner


def serve_items(runner, items: list[Item], printer: ResultPrinter) -> None:
    """Sends every valid request at once and prints each result as its turn comes."""
    gen = runner.run()
    next(gen)
    for item in items:
        if item.request is None:
            printer.on_result(item.index, None)
    requests = [item.request for item in items if item.request is not None]
    printer.stats.begin(len(requests), runner.batch_size)
    try:
        out = gen.send(requests) if requests else None
        while out is not None:
            index = int(out.request_id)
            if isinstance(out, TokenEvent):
                printer.on_token(index, out)
            else:
                printer.on_result(index, out)
            out = next(gen)
    finally:
        printer.stats.close()
    gen.close()   # multi-process: tells the other processes to stop
    printer.finish()


def run(args, runner=None, stdin=None) -> int:
    """Serves the requests `args` describe; returns the exit status (1 if any request failed)."""
    follower = jax.process_index() != 0   # process 0 owns the request stream
    items = [] if args.interactive or follower else read_items(args, REFERENCE_PROMPT)
    times = StartupTimes()
    if runner is None:
        with exit_on_interrupt():    # Ctrl-C while loading or compiling: 130 at once
            runner = build_runner(args, default_slots(args, items), times,
                                  may_constrain(args, items))
    if follower:
        follow(runner)
        return 0
    stats = RunStats(times.load_s, times.compile_s)
    if args.interactive:
        return Repl(runner, args, stdin or sys.stdin, stats).run()
    printer = ResultPrinter(args, items, stats)
    serve_items(runner, items, printer)
    if not args.quiet:
        print(stats.summary(), file=sys.stderr, flush=True)
    return 1 if printer.failed else 0


def _check_flags(args) -> None:
    """Flag combinations and sampling flags, before anything is loaded."""
    if args.interactive and (args.prompt or args.input_file):
        raise UsageError("--interactive reads prompts from stdin: drop --prompt/--input-file")
    if args.interactive and args.serve:
        raise UsageError("--serve answers HTTP requests; --interactive reads a terminal: "
                         "drop one of them")
    if args.interactive and args.json:
        raise UsageError("--interactive prints text for a person; --json is for --prompt or "
                         "--input-file runs: drop one of them")
    try:  # the sampling flags, checked once by the Request they will fill
        make_request({"prompt": "x"}, args, 0)
    except ValueError as e:
        raise UsageError(f"bad sampling flag: {e}") from None


def _serve(args) -> int:
    """The HTTP server on the model the flags name (slots: --batch-size, else the cap)."""
    from grok.serving.http import serve   # FastAPI and uvicorn load only to serve

    init_multihost(args)
    try:
        return serve(args, lambda: build_runner(args, prebuild_grammar_tokenizer=True)) or 0
    except ValueError as e:   # UsageError included: a bad flag, checkpoint or server setting
        raise UsageError(str(e)) from None


def main(argv: Optional[Sequence[str]] = None, runner=None, stdin=None,
         prog: str = "run.py", serve: bool = False) -> int:
    """run.py. `runner`: one built for these arguments (tests reuse it: no reload, no compile).
    `serve`: `grok serve` (the HTTP server's flags added; same as --serve)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    add_serve = None
    if serve or "--serve" in argv or "-h" in argv or "--help" in argv:
        from grok.serving.http import add_serve_arguments as add_serve   # the server's flags
    args = build_parser(prog, add_serve).parse_args(argv)
    args.serve = args.serve or serve
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.serve:
            _check_flags(args)
            return _serve(args)
        init_multihost(args)
        _check_flags(args)
        return run(args, runner, stdin)
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130


def grok_main(argv: Optional[Sequence[str]] = None) -> int:
    """The `grok` command and `python -m grok`: `grok run|serve|bench ...` (run by default)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    if command is None and argv[:1] in (["-h"], ["--help"]):
        print("usage: grok {run,serve,bench} [flags]   (no command: run)\n")
        for name, what in SUBCOMMANDS.items():
            print(f"  grok {name:6s} {what}")
        print("\n`grok COMMAND --help` lists a command's flags.")
        return 0
    rest = argv[1:] if command else argv
    if command == "bench":
        from grok import bench

        bench.main(rest)
        return 0
    return main(rest, prog=f"grok {command or 'run'}", serve=command == "serve")
