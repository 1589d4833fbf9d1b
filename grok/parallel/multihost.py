"""One serving job over several processes (hosts): joining, a command channel, dead peers.

Every process runs the same program: `initialize()` joins the job (`jax.distributed`), the
mesh tiles `local_mesh_config` per process by `between_hosts_config`
(grok.parallel.sharding.make_mesh), the checkpoint loader places only each process's own
shards, and every process compiles the same functions. Then process 0 (the leader) serves and
the others follow it in lockstep (grok.serving.multihost): every jitted call spans all
processes, so all must make the same calls in the same order. The leader publishes what only
it knows (its scheduler's decisions, once per step) on `command_channel()`; this module
carries those bytes and knows nothing of what they mean.

Commands travel through the coordination service's key-value store (process 0's
jax.distributed service), not device collectives: a device broadcast would wait for the decode
step in flight and undo the overlap of host and device work.

Dead peers: each process sets a heartbeat key every second and watches everyone's. A peer whose
heartbeat stops for `timeout_s` ends this process with an error naming it (exit code
`PEER_LOST_EXIT_CODE`) instead of a hang in a collective. When process 0 dies, the
coordination service dies with it and jax ends the others at once ("the leader task was
preempted/died"). A process that does not join within `init_timeout_s` gets a clear error too.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
import time
from typing import Optional

import jax

logger = logging.getLogger(__name__)

ENV_COORDINATOR = ("GROK_COORDINATOR", "JAX_COORDINATOR_ADDRESS")
ENV_NUM_PROCESSES = ("GROK_NUM_PROCESSES", "JAX_NUM_PROCESSES")
ENV_PROCESS_ID = ("GROK_PROCESS_ID", "JAX_PROCESS_ID")
ENV_PEER_TIMEOUT = "GROK_PEER_TIMEOUT"
ENV_INIT_TIMEOUT = "GROK_INIT_TIMEOUT"
DEFAULT_PEER_TIMEOUT_S = 30.0
DEFAULT_INIT_TIMEOUT_S = 300.0
JAX_HEARTBEAT_TIMEOUT_S = 100  # jax's default; the backstop for our watchdog
JAX_SHUTDOWN_TIMEOUT_S = 60    # how long a finished process waits for the others to finish
PEER_LOST_EXIT_CODE = 75       # EX_TEMPFAIL: the job can be restarted
KEY_PREFIX = "grok/multihost"
_COMMAND_BLOCK = 256           # commands per key directory; read directories are deleted
_DONE = "done"                 # a heartbeat value: this process has finished cleanly
_CLOSED = b"\x00closed"        # the command that ends the followers' loop (never valid JSON)
_WATCHDOG: Optional[_Watchdog] = None   # this process's, once it joined a job
_CHANNEL: Optional["CommandChannel"] = None   # the job's one command stream, made on first use


# ---- joining the job ---------------------------------------------------------------------

def _from_env(value, names, flag: str, kind):
    """`value`, else the first set environment variable of `names`, converted by `kind`."""
    where = flag
    if value is None:
        for name in names:
            if os.environ.get(name):
                value, where = os.environ[name], name
                break
    if value is None:
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be {kind.__doc__}, got {value!r}") from None


# Checkers for `_from_env`: each docstring says what a valid value is, for the error message.

def _coordinator(value) -> str:
    """HOST:PORT"""
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(value)
    return str(value)


def _count(value, minimum: int = 1) -> int:
    """an int >= 1"""
    if int(value) != float(value) or int(value) < minimum:
        raise ValueError(value)
    return int(value)


def _index(value) -> int:
    """an int >= 0"""
    return _count(value, 0)


def _seconds(value) -> float:
    """a number of seconds > 0"""
    if not float(value) > 0:
        raise ValueError(value)
    return float(value)


def resolve(coordinator=None, num_processes=None, process_id=None) -> Optional[tuple]:
    """(coordinator, num_processes, process_id) from the flags, else the environment; None
    when neither names a coordinator (a single-process job)."""
    coordinator = _from_env(coordinator, ENV_COORDINATOR, "--coordinator", _coordinator)
    num_processes = _from_env(num_processes, ENV_NUM_PROCESSES, "--num-processes", _count)
    process_id = _from_env(process_id, ENV_PROCESS_ID, "--process-id", _index)
    if coordinator is None:
        if num_processes not in (None, 1) or process_id not in (None, 0):
            raise ValueError("a multi-process job needs --coordinator HOST:PORT (or "
                             f"{ENV_COORDINATOR[0]}): process 0's address, the same on every host")
        return None
    if num_processes is None or process_id is None:
        raise ValueError(f"--coordinator needs --num-processes (or {ENV_NUM_PROCESSES[0]}) and "
                         f"--process-id (or {ENV_PROCESS_ID[0]})")
    if process_id >= num_processes:
        raise ValueError(f"--process-id {process_id} must be below --num-processes {num_processes}")
    return coordinator, num_processes, process_id


def initialize(coordinator=None, num_processes=None, process_id=None, *,
               timeout_s: Optional[float] = None, init_timeout_s: Optional[float] = None) -> bool:
    """Joins the multi-process job; False (and nothing done) for a single-process run.

    Call before any other JAX use. Arguments left None come from the environment (GROK_*,
    then JAX_* names; see the module constants). `timeout_s`: how long a silent peer is
    tolerated before this process exits naming it; `init_timeout_s`: the wait for all to join.
    """
    resolved = resolve(coordinator, num_processes, process_id)
    if resolved is None:
        return False
    coordinator, num_processes, process_id = resolved
    timeout_s = _from_env(timeout_s, (ENV_PEER_TIMEOUT,), "timeout_s", _seconds) \
        or DEFAULT_PEER_TIMEOUT_S
    init_timeout_s = _from_env(init_timeout_s, (ENV_INIT_TIMEOUT,), "init_timeout_s", _seconds) \
        or DEFAULT_INIT_TIMEOUT_S
    if jax.distributed.is_initialized():
        raise RuntimeError("grok.parallel.multihost.initialize: jax.distributed is already initialized")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    _native_stdout_to_stderr()
    joined = threading.Event()
    threading.Thread(target=_join_deadline, daemon=True, name="grok-join-deadline",
                     args=(joined, coordinator, num_processes, process_id, init_timeout_s)).start()
    # jax's own limits sit beyond ours, so our clearer errors come first. Its heartbeat
    # timeout must be equal on all processes (a client beats at a fraction of it): a constant.
    jax.distributed.initialize(
        coordinator, num_processes, process_id,
        initialization_timeout=int(init_timeout_s) + 30,
        heartbeat_timeout_seconds=JAX_HEARTBEAT_TIMEOUT_S,
        shutdown_timeout_seconds=JAX_SHUTDOWN_TIMEOUT_S)
    joined.set()
    global _WATCHDOG
    _WATCHDOG = _Watchdog(_client(), process_id, num_processes, timeout_s)
    _WATCHDOG.start()
    atexit.register(_at_exit)  # after jax's atexit shutdown, so it runs before it
    logger.info("process %d of %d joined the job at %s", process_id, num_processes, coordinator)
    return True


def _native_stdout_to_stderr():
    """Keeps stdout for the program's own output (e.g. one JSON object per line): gloo prints
    "[Gloo] Rank 0 is connected to ..." on the C++ stdout, so native writes to fd 1 go to
    stderr, and Python's sys.stdout writes to a duplicate of the original fd 1."""
    try:
        sys.stdout.flush()
        line_buffering = sys.stdout.line_buffering
        python_stdout = os.fdopen(os.dup(1), "w", encoding=sys.stdout.encoding,
                                  errors=sys.stdout.errors)
    except (AttributeError, OSError, ValueError):  # no real stdout: leave it as it is
        return
    python_stdout.reconfigure(line_buffering=line_buffering)
    os.dup2(2, 1)
    sys.stdout = python_stdout


def _join_deadline(joined: threading.Event, coordinator, num_processes, process_id, timeout_s):
    if joined.wait(timeout_s):
        return
    if process_id == 0:
        why = (f"not all {num_processes} processes joined; start one per host with the same "
               f"--coordinator {coordinator} and --num-processes {num_processes}, and "
               f"--process-id 0..{num_processes - 1}")
    else:
        why = (f"the coordinator (process 0) at {coordinator} is unreachable, or not all "
               f"{num_processes} processes joined")
    _fail(f"process {process_id} could not join the job within {timeout_s:g} s: {why}")


def _client():
    from jax._src import distributed  # the coordination-service client jax.distributed made

    return distributed.global_state.client


def _fail(message: str) -> None:
    """Ends this process at once: a dead peer leaves collectives and jax's shutdown hanging."""
    sys.stdout.flush()
    sys.stderr.write(f"grok.parallel.multihost: error: {message}\n")
    sys.stderr.flush()
    os._exit(PEER_LOST_EXIT_CODE)


def check_consistent(settings: dict, timeout_ms: int = 60_000) -> None:
    """Raises ValueError naming the process and settings that differ from process 0's (every
    process checks all): other slots, buckets or mesh would compile other programs, and the
    first collective would hang instead of failing."""
    mine = json.loads(json.dumps(settings, sort_keys=True, default=str))
    client, me = _client(), jax.process_index()
    client.key_value_set(f"{KEY_PREFIX}/settings/{me}", json.dumps(mine))
    get = lambda p: json.loads(client.blocking_key_value_get(f"{KEY_PREFIX}/settings/{p}", timeout_ms))
    leader = mine if me == 0 else get(0)
    for process in range(1, jax.process_count()):
        theirs = mine if process == me else get(process)
        differ = sorted(k for k in set(theirs) | set(leader) if theirs.get(k) != leader.get(k))
        if differ:
            raise ValueError(f"process {process} was started with other settings than process 0 "
                             f"({', '.join(differ)} differ): run the same command on every host, "
                             f"only --process-id changes")


def is_leader() -> bool:
    """Whether this process owns the request stream (process 0; also any single process)."""
    return jax.process_index() == 0


# ---- heartbeats --------------------------------------------------------------------------

class _Watchdog(threading.Thread):
    """Sets this process's heartbeat key and ends the process when a peer's stops changing."""

    def __init__(self, client, process_id: int, num_processes: int, timeout_s: float):
        super().__init__(daemon=True, name="grok-watchdog")
        self.client, self.process_id, self.timeout_s = client, process_id, timeout_s
        self.period_s = min(1.0, timeout_s / 10)
        now = time.monotonic()
        self.seen = {p: (None, now) for p in range(num_processes) if p != process_id}
        self.done = threading.Event()

    def _key(self, process: int) -> str:
        return f"{KEY_PREFIX}/heartbeat/{process}"

    def run(self):
        beat = 0
        while not self.done.is_set():
            try:
                self.client.key_value_set(self._key(self.process_id), str(beat),
                                          allow_overwrite=True)
                beats = dict(self.client.key_value_dir_get(f"{KEY_PREFIX}/heartbeat/"))
            except Exception as e:  # the service itself is gone: process 0 died
                beats = None
                logger.debug("heartbeat: %s", e)
            beat += 1
            self._check(beats)
            self.done.wait(self.period_s)

    def _check(self, beats: Optional[dict]):
        now = time.monotonic()
        for process, (last, since) in list(self.seen.items()):
            value = None if beats is None else beats.get(self._key(process))
            if value == _DONE:
                del self.seen[process]
            elif value != last and beats is not None:
                self.seen[process] = (value, now)
            elif now - since > self.timeout_s and not self.done.is_set():
                what = "process 0 (the coordinator)" if beats is None and process == 0 \
                    else f"process {process}"
                _fail(f"lost peer {what}: no heartbeat for {now - since:.0f} s (it died, hung, "
                      f"or its host is unreachable); process {self.process_id} exits")

    def finish(self):
        """This process ends cleanly: peers stop watching it."""
        if self.done.is_set():
            return
        self.done.set()
        try:
            self.client.key_value_set(self._key(self.process_id), _DONE, allow_overwrite=True)
        except Exception as e:
            logger.debug("heartbeat: %s", e)

    def await_verdict(self):
        """After a runtime error in a collective: waits for a verdict on the peers, so a lost
        peer is reported as such (this process exits); else returns (to re-raise the error)."""
        deadline = time.monotonic() + self.timeout_s + 5 * self.period_s
        while time.monotonic() < deadline and self.is_alive():
            time.sleep(self.period_s)


def _at_exit():
    if _CHANNEL is not None:
        _CHANNEL.close()  # followers would wait for process 0 forever
    if _WATCHDOG is not None:
        _WATCHDOG.finish()


# ---- the command stream ------------------------------------------------------------------

class CommandChannel:
    """Process 0's commands (bytes), numbered, to every other process, through the key-value
    store. `close()` ends the stream: the followers' `receive()` then returns None.

    Command n lives at `.../command/{n // 256}/{n % 256}`. Followers record the block they
    read (`.../ack/{process}`); the leader deletes blocks every follower has moved past.
    """

    def __init__(self, client, process_id: int, num_processes: int):
        self.client, self.process_id, self.num_processes = client, process_id, num_processes
        self.sent = 0              # commands published (leader) or read (followers)
        self.deleted_blocks = 0
        self.open = False          # the leader published commands since its last close

    def _key(self, n: int) -> str:
        return f"{KEY_PREFIX}/command/{n // _COMMAND_BLOCK}/{n % _COMMAND_BLOCK}"

    def publish(self, payload: bytes):
        if self.sent % _COMMAND_BLOCK == 0:
            self._delete_read_blocks()
        self.client.key_value_set_bytes(self._key(self.sent), payload)
        self.sent += 1
        self.open = payload != _CLOSED

    def close(self):
        """Leader: ends the followers' loop (a later publish starts a new one)."""
        if self.open:
            self.publish(_CLOSED)

    def _delete_read_blocks(self):
        acks = dict(self.client.key_value_dir_get(f"{KEY_PREFIX}/ack/"))
        followers = range(1, self.num_processes)
        reached = min((int(acks.get(f"{KEY_PREFIX}/ack/{p}", 0)) for p in followers),
                      default=self.sent // _COMMAND_BLOCK)
        for block in range(self.deleted_blocks, reached):
            self.client.key_value_delete(f"{KEY_PREFIX}/command/{block}")
        self.deleted_blocks = max(self.deleted_blocks, reached)

    def receive(self, poll_ms: int = 1000) -> Optional[bytes]:
        """The next command, None when the leader closed the stream; waits as long as
        process 0 takes (it may wait for user input)."""
        n = self.sent
        if n % _COMMAND_BLOCK == 0:
            self.client.key_value_set(f"{KEY_PREFIX}/ack/{self.process_id}",
                                      str(n // _COMMAND_BLOCK), allow_overwrite=True)
        while True:
            try:
                payload = self.client.blocking_key_value_get_bytes(self._key(n), poll_ms)
                break
            except jax.errors.JaxRuntimeError as e:
                if "DEADLINE_EXCEEDED" not in str(e):
                    raise
        self.sent += 1
        return None if payload == _CLOSED else payload


def command_channel() -> CommandChannel:
    """The job's one command stream (successive generators continue its numbering)."""
    global _CHANNEL
    if _CHANNEL is None:
        if not jax.distributed.is_initialized():
            raise RuntimeError("multi-process serving needs grok.parallel.multihost.initialize() first")
        _CHANNEL = CommandChannel(_client(), jax.process_index(), jax.process_count())
    return _CHANNEL


def explain_failure(error: BaseException) -> None:
    """A runtime error in a collective is most often a lost peer: lets the watchdog say so
    (this process then exits naming the peer); returns when the peers are fine."""
    if _WATCHDOG is not None and isinstance(error, jax.errors.JaxRuntimeError):
        _WATCHDOG.await_verdict()
