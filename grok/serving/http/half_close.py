"""A client that half-closes its connection after sending its request still gets the answer.

Some clients (`nc -N`, scripts that shut down their sending side once the body is written)
close their half of the TCP connection and wait for the response. uvicorn reads that end of
input as the client gone, closes the connection and cancels the request. `HalfCloseProtocol`
(uvicorn's h11 protocol otherwise) keeps a connection whose request was read to the end open
for the answer.

TCP cannot tell a client that half-closed from one that closed entirely until the server
writes to it: the latter answers with a reset. So while the answer is not started, the server
sends `103 Early Hints` every PROBE_INTERVAL_S: an informational response every HTTP/1.1 client
must accept and skip; for a client that is gone, the write fails and the request is cancelled
as before. Once the response is complete the connection is closed (the client sends nothing
more). A client that half-closes in the middle of its body is gone as before.
"""

from __future__ import annotations

import asyncio
from typing import Optional

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

PROBE_INTERVAL_S = 0.25


class HalfCloseProtocol(H11Protocol):
    """uvicorn's h11 protocol, answering a request whose client half-closed after it."""

    def eof_received(self) -> Optional[bool]:
        cycle = self.cycle
        if (cycle is None or cycle.response_complete
                or self.conn.their_state not in (h11.DONE, h11.MUST_CLOSE)):
            return None                  # idle, or mid-request: the client is gone
        self.loop.create_task(self._answer_half_closed(cycle))
        return True                      # keep the connection open for the answer

    async def _answer_half_closed(self, cycle) -> None:
        while not cycle.response_complete and not cycle.disconnected:
            if not cycle.response_started:
                try:
                    data = self.conn.send(h11.InformationalResponse(
                        status_code=103, headers=[], reason=b"Early Hints"))
                except h11.LocalProtocolError:
                    return
                self.transport.write(data)    # a client that is gone resets: connection_lost
            await asyncio.sleep(PROBE_INTERVAL_S)
        if not self.transport.is_closing():
            self.transport.close()            # flushes the answer first
