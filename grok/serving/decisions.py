"""What process 0 decides per scheduler step, and how other processes learn it.

A step's `Decisions` are the only choices that do not follow from the device's outputs: which
queued requests get a slot (with their prompts already tokenized) and which running requests
are cancelled. Everything else the scheduler does (chunking, inserting, stopping, releasing)
follows from these and from step outputs that every process sees alike. So a multi-process
job serves in lockstep when process 0 `publish`es its decisions once per step, before any
device work, and every other process `replay`s them into the same step
(grok.serving.multihost has the implementation over the coordination service).

Decisions travel as JSON (never pickle): a Request holds only Python values.
"""

from __future__ import annotations

import dataclasses
import json
from typing import NamedTuple, Optional, Protocol

from grok.serving.requests import Request


class Admission(NamedTuple):
    request: Request      # re-validated, prompt as token ids
    request_id: str


class Decisions(NamedTuple):
    admitted: list        # [Admission], in slot order
    cancelled: list       # [request_id] of admitted requests


NO_DECISIONS = Decisions([], [])


class AdmissionLog(Protocol):
    """Where the leader's decisions go and the followers' come from."""

    def publish(self, decisions: Decisions) -> None:
        """Process 0: called once per step, before the step's device work."""

    def replay(self) -> Optional[Decisions]:
        """Other processes: the next step's decisions (waits for them); None: stop serving."""


def encode(decisions: Decisions) -> bytes:
    items = [{"request_id": a.request_id, "request": dataclasses.asdict(a.request)}
             for a in decisions.admitted]
    return json.dumps({"op": "step", "admit": items, "cancel": list(decisions.cancelled)},
                      allow_nan=False).encode()


STOP = json.dumps({"op": "stop"}).encode()   # ends the followers' loop


def decode(payload: bytes) -> Optional[Decisions]:
    """A published command -> Decisions, or None for STOP."""
    command = json.loads(payload.decode())
    if command["op"] == "stop":
        return None
    admitted = [Admission(Request(**item["request"]), item["request_id"])
                for item in command["admit"]]
    return Decisions(admitted, list(command["cancel"]))
