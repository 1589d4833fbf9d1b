"""Serving over several processes: process 0 schedules, the others replay its decisions.

Process 0 runs the usual request generator (grok.serving.generator.serve) over a Scheduler
whose admission log is `ChannelLog`: once per step, before any device work, it publishes the
step's decisions (the requests it admits, prompts tokenized, and the cancels) on the job's
command channel (grok.parallel.multihost). The other processes run `follow`: the same
Scheduler on the same engine, stepping once per published decision. Everything else
(chunking, inserting, stopping, releasing) follows from the decisions and from step outputs
that are replicated, hence equal, on every process. Results exist everywhere; only process 0
yields them. Closing process 0's generator closes the channel, which ends the followers.
"""

from __future__ import annotations

import logging
from typing import Optional

import jax

from grok.parallel import multihost
from grok.serving import decisions as decisions_
from grok.serving.decisions import Decisions
from grok.serving.generator import scheduler_for, serve

logger = logging.getLogger(__name__)


class ChannelLog:
    """An AdmissionLog (grok.serving.decisions) over a multihost.CommandChannel."""

    def __init__(self, channel: multihost.CommandChannel):
        self.channel = channel

    def publish(self, decisions: Decisions) -> None:
        self.channel.publish(decisions_.encode(decisions))

    def replay(self) -> Optional[Decisions]:
        payload = self.channel.receive()
        return None if payload is None else decisions_.decode(payload)

    def close(self) -> None:
        self.channel.close()


def serve_multihost(runner):
    """Process 0's request generator (grok.serving.scheduler protocol); closing it stops the
    other processes."""
    if not multihost.is_leader():
        raise RuntimeError("serve_multihost runs on process 0; the other processes run follow()")
    log = ChannelLog(multihost.command_channel())
    try:
        yield from serve(scheduler_for(runner, log=log))
    except Exception as e:
        multihost.explain_failure(e)
        raise
    finally:
        log.close()


def follow(runner) -> None:
    """The other processes: run process 0's steps in lockstep until its generator closes."""
    if multihost.is_leader():
        raise RuntimeError("follow() runs on processes other than 0; process 0 serves")
    log = ChannelLog(multihost.command_channel())
    scheduler = scheduler_for(runner)
    try:
        while (decisions := log.replay()) is not None:
            scheduler.step(decisions)
    except Exception as e:
        multihost.explain_failure(e)
        raise
    logger.info("process %d: process 0 stopped serving", jax.process_index())
