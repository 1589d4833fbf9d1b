"""`python run.py --serve` / `grok serve`: the OpenAI-compatible server on uvicorn.

The CLI adds `add_serve_arguments(parser)` to its parser and calls
`serve(args, build_runner)` with a function that builds the InferenceRunner for the model
flags. The port is bound first (grok.serving.listen; the entry points bind it before even
importing JAX): a port in use or any bind failure is an error naming --host/--port before
anything loads (exit 2). Then the port opens, the model is built and compiled on the engine
thread, and /health answers 200 when it is ready. SIGTERM or SIGINT while the model loads or
compiles ends the process at once (128 + the signal: 130 for Ctrl-C; nothing is in flight).
Once ready: the server stops accepting, lets requests in flight finish for up to
--shutdown-grace seconds, cancels the rest, and `serve` returns 0. In a multi-process job,
process 0 serves HTTP and the others follow its steps.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Any, Callable, Optional

import uvicorn

from grok.serving.interrupt import interrupted_exit
from grok.serving.listen import DEFAULT_HOST, DEFAULT_PORT, socket_for
from grok.serving.http.app import create_app
from grok.serving.http.chat_template import ChatTemplate
from grok.serving.http.engine_loop import Backend, EngineLoop, backend_for
from grok.serving.http.half_close import HalfCloseProtocol
from grok.serving.http.metrics import ServerMetrics

logger = logging.getLogger(__name__)

API_KEY_ENV = "GROK_API_KEY"
DEFAULT_MAX_QUEUE = 1024        # waiting requests beyond the slots; more get 503 at once
DEFAULT_SHUTDOWN_GRACE_S = 20.0  # in-flight requests get this long to finish on SIGTERM
RELEASE_CHECKPOINT_DIR = "checkpoints"   # the release's directory: served as "grok-1"


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The server's flags (the model flags are the CLI's)."""
    group = parser.add_argument_group("HTTP server (--serve)")
    group.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
    group.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    group.add_argument("--served-model-name", metavar="NAME", help="the model name clients "
                       "send (default: the checkpoint directory's name; grok-1 for the "
                       "release in checkpoints/, demo for the demo)")
    group.add_argument("--api-key", default=os.environ.get(API_KEY_ENV), metavar="KEY",
                       help=f"require 'Authorization: Bearer KEY' on every route but /health "
                       f"(KEY1,KEY2,...: any of them; default: env {API_KEY_ENV})")
    group.add_argument("--isolate-cache-per-key", action="store_true",
                       help="clients of different API keys never share prefix-cache entries "
                       "(each request's cache_salt isolates further)")
    group.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE, metavar="N",
                       help="requests that may wait for a slot; beyond it 503 at once")
    group.add_argument("--chat-template", metavar="FILE.json", help="chat template replacing "
                       "the plain 'User:/Assistant:' transcript (see grok.serving.http."
                       "chat_template)")
    group.add_argument("--precompile-all", action="store_true", help="before reporting "
                       "ready, compile every prefill shape (continuation chunks, batched "
                       "prompts), so no request waits for a compile; a slower start")
    group.add_argument("--shutdown-grace", type=float, default=DEFAULT_SHUTDOWN_GRACE_S,
                       metavar="S", help="on SIGTERM/SIGINT, seconds in-flight requests may "
                       "take to finish before they are cancelled")
    return group


def default_model_name(args) -> str:
    checkpoint = args.checkpoint
    if checkpoint:
        name = os.path.basename(os.path.normpath(checkpoint))
        return "grok-1" if name == RELEASE_CHECKPOINT_DIR else name
    if os.path.exists(os.path.join(RELEASE_CHECKPOINT_DIR, "ckpt-0")):
        return "grok-1"
    config = args.config
    if config:
        return os.path.splitext(os.path.basename(config))[0]
    return "demo"


def json_safe(name: str) -> str:
    """`name` as valid Unicode: a directory name that is not UTF-8 (bytes Python decoded as
    lone surrogates) gets U+FFFD for its bad bytes, so every response can hold it."""
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:      # other lone surrogates
        raw = name.encode("utf-8", "replace")
    return raw.decode("utf-8", "replace")


def check_serve_arguments(args) -> None:
    """ValueError naming a bad server flag."""
    if not 0 <= args.port < 2**16:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    if args.max_queue < 0:
        raise ValueError(f"--max-queue must be >= 0, got {args.max_queue}")
    if args.shutdown_grace < 0:
        raise ValueError(f"--shutdown-grace must be >= 0, got {args.shutdown_grace}")
    if args.api_key is not None and not args.api_key.strip():
        raise ValueError("--api-key is empty")


class GracefulServer(uvicorn.Server):
    """uvicorn's Server, but a SIGTERM/SIGINT that shut it down cleanly is not re-raised
    afterwards (uvicorn re-raises it, which would end the process with the signal's status
    instead of 0); one that comes while the model loads or compiles ends the process at once
    (grok.serving.interrupt: a KeyboardInterrupt cannot stop XLA mid-compile cleanly)."""

    engine: EngineLoop

    def handle_exit(self, sig: int, frame) -> None:
        if not self.engine.ready.is_set():
            interrupted_exit(sig)
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def make_server(build: Callable[[], Backend], *, model_name: str, host: str = DEFAULT_HOST,
                port: int = DEFAULT_PORT, api_key: Optional[str] = None,
                max_queue: Optional[int] = DEFAULT_MAX_QUEUE,
                chat_template: Optional[ChatTemplate] = None,
                shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE_S,
                log_level: str = "warning",
                isolate_cache_per_key: bool = False) -> GracefulServer:
    """A server (not started: `.run()` blocks, or run it in a thread) for `build`'s Backend."""
    model_name = json_safe(model_name)
    engine = EngineLoop(build, ServerMetrics(model_name), max_queue)
    app = create_app(engine, model_name, chat_template, api_key, isolate_cache_per_key)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=shutdown_grace, lifespan="on",
                            http=HalfCloseProtocol)
    server = GracefulServer(config)
    server.engine = engine
    return server


def serve(args, build_runner: Callable[[], Any]) -> int:
    """Serves until SIGTERM/SIGINT; returns the exit status. `build_runner()`: the
    initialized InferenceRunner for the CLI's model flags (called on the engine thread)."""
    import jax

    check_serve_arguments(args)
    template = ChatTemplate.load(args.chat_template) if args.chat_template else None
    if jax.process_count() > 1:
        return _serve_multihost(args, build_runner, template)
    name = json_safe(args.served_model_name or default_model_name(args))
    sock = socket_for(args.host, args.port)
    failure: list = []

    def build() -> Backend:
        try:
            backend = backend_for(build_runner(), precompile_all=args.precompile_all)
        except BaseException as e:   # a bad checkpoint, mesh, ...: stop serving, exit 2
            failure.append(e)
            server.should_exit = True
            raise
        print(f"Serving '{name}' ({backend.slots} slots) on http://{args.host}:{args.port}",
              file=sys.stderr, flush=True)
        return backend

    server = make_server(build, model_name=name, host=args.host, port=args.port,
                         api_key=args.api_key, max_queue=args.max_queue,
                         chat_template=template, shutdown_grace=args.shutdown_grace,
                         isolate_cache_per_key=args.isolate_cache_per_key)
    server.run(sockets=[sock])
    if failure:
        raise failure[0]
    return 0


def _serve_multihost(args, build_runner, template) -> int:
    """Every process builds the model (its compiled steps are collectives); process 0 serves
    HTTP and publishes each step's admissions and cancels (grok.serving.multihost.ChannelLog);
    the others replay them in lockstep until process 0 closes the channel at shutdown."""
    import jax

    from grok.parallel import multihost
    from grok.serving.multihost import ChannelLog, follow

    runner = build_runner()
    if not multihost.is_leader():
        follow(runner)
        return 0
    log = ChannelLog(multihost.command_channel())
    name = args.served_model_name or default_model_name(args)
    try:
        server = make_server(lambda: backend_for(runner, log, args.precompile_all),
                             model_name=name,
                             host=args.host, port=args.port, api_key=args.api_key,
                             max_queue=args.max_queue, chat_template=template,
                             shutdown_grace=args.shutdown_grace,
                             isolate_cache_per_key=args.isolate_cache_per_key)
        print(f"Serving '{name}' on http://{args.host}:{args.port} (process 0 of "
              f"{jax.process_count()})", file=sys.stderr, flush=True)
        server.run(sockets=[socket_for(args.host, args.port)])
    finally:
        log.close()     # the followers' replay ends
    return 0
