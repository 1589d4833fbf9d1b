"""The HTTP server's listening socket, bound before anything slow happens.

A port in use must be reported at once, not after seconds of importing JAX, loading and
compiling. So the entry points (`run.py`, `python -m grok`, the `grok` command) call
`bind_early(argv)` first: with `--serve` (or `grok serve`) it binds --host/--port with the
standard library alone and keeps the socket, or prints the error and exits 2. The server then
listens on that socket (`socket_for`). Standard library only: importing this starts nothing.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from typing import Optional, Sequence

DEFAULT_HOST = "127.0.0.1"      # local only unless asked: the server has no TLS
DEFAULT_PORT = 8000
FOLLOWER_ENV = ("GROK_PROCESS_ID", "JAX_PROCESS_ID")   # a multi-host process other than 0

_bound: dict = {}                # (host, port) -> a socket bound by bind_early


def bind_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) for the server to listen on; ValueError naming the
    flags when it cannot be (in use, no such address, a privileged port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as e:
        sock.close()
        is_os = isinstance(e, OSError)    # an OverflowError (port out of range) has no errno
        reason = (e.strerror if is_os else None) or str(e)
        hint = (" (another server is running there? choose another --port)"
                if is_os and e.errno == errno.EADDRINUSE else "")
        raise ValueError(f"--host {host} --port {port}: cannot listen: {reason}{hint}") from None
    return sock


def _is_follower(argv: Sequence[str], process_id: Optional[int]) -> bool:
    if process_id is not None:
        return process_id != 0
    return any(os.environ.get(name, "0").strip() not in ("", "0") for name in FOLLOWER_ENV)


def bind_early(argv: Sequence[str], prog: str, serve: bool = False) -> None:
    """With --serve in `argv` (or `serve`): binds --host/--port now and keeps the socket for
    `socket_for`; on failure prints `prog: error: ...` and exits 2. Does nothing for --help
    and for the processes of a multi-host job other than process 0 (they serve no HTTP)."""
    argv = list(argv)
    if not (serve or "--serve" in argv) or "-h" in argv or "--help" in argv:
        return
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", default=str(DEFAULT_PORT))
    parser.add_argument("--process-id", default=None)
    args, _ = parser.parse_known_args(argv)
    try:
        port = int(args.port)
        process_id = None if args.process_id is None else int(args.process_id)
    except ValueError:
        return      # the real parser reports it
    if _is_follower(argv, process_id) or not 0 <= port < 2**16:
        return
    try:
        _bound[(args.host, port)] = bind_socket(args.host, port)
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)


def socket_for(host: str, port: int) -> socket.socket:
    """The socket `bind_early` bound for (host, port), else one bound now (ValueError)."""
    sock = _bound.pop((host, port), None)
    return sock if sock is not None else bind_socket(host, port)
