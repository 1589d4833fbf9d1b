"""The OpenAI-compatible HTTP server (FastAPI + uvicorn) over the scheduler.

Layout: protocol (request bodies, validation), errors (OpenAI's error body), chat_template,
metrics (Prometheus), engine_loop (the thread owning the scheduler), streams (one HTTP
request's events on its asyncio task), generation (completions and chat), responses (OpenAI
response bodies), app (routes) and server (flags, uvicorn, signals).

Entry: `add_serve_arguments(parser)` and `serve(args, build_runner)`, which the command line
runs (`grok serve`, `run.py --serve`).
"""

from grok.serving.http.server import add_serve_arguments, make_server, serve

__all__ = ["add_serve_arguments", "make_server", "serve"]
