"""Frame tracing for ``gateway read --trace``: each request and what came back, with timestamps.

A ``Link`` hands every packet pymodbus sends or receives to ``FrameTrace.packet`` (the client's
``trace_packet`` hook) and brackets each request with ``begin`` / ``end``. pymodbus passes on
receive the whole buffer it is about to parse, which grows as bytes arrive and is emptied when a
frame (good or spoilt) is consumed; the trace keeps the bytes, not the repeats, so a response
shows once, whole, as it arrived. ``end`` closes the request with its outcome: nothing (a valid
answer), an exception response, ``CRC error`` or ``timeout``. The events are JSON-able (they
travel through the daemon's control socket); ``gateway.cli.render`` prints them.
"""

from __future__ import annotations

import time

from gateway.driver import TraceEvent


class FrameTrace:
    """Collects the frames of the requests made while it is attached to a link."""

    def __init__(self, *, text: bool = False) -> None:
        self.events: list[TraceEvent] = []
        self._text = text  # ASCII framing: show frames as text
        self._sent = 0.0  # monotonic time of the request being traced
        self._segments: list[bytes] = []  # received bytes of the current request
        self._last_rx = 0.0
        self._last_rx_wall = 0.0

    def begin(self) -> None:
        """A request is about to be sent."""
        self._segments = []
        self._sent = time.monotonic()
        self._last_rx = 0.0

    def packet(self, sending: bool, data: bytes) -> None:
        """pymodbus' trace_packet: a frame sent, or the receive buffer as it stands."""
        if sending:
            self._add("tx", data, "", None)
            self._sent = time.monotonic()
            return
        if not data:
            return
        self._last_rx, self._last_rx_wall = time.monotonic(), time.time()
        if self._segments and data.startswith(self._segments[-1]):
            self._segments[-1] = data  # the same buffer, grown
        else:
            self._segments.append(data)  # the buffer was consumed: new bytes

    def end(self, note: str = "") -> None:
        """The request is over: record what came back (maybe nothing) and ``note`` its outcome."""
        received = b"".join(self._segments)
        self._segments = []
        if not received and not note:
            return  # a request that expects no answer
        ms = round((self._last_rx - self._sent) * 1000, 1) if received else None
        # An answer is stamped when its last byte came, silence when the wait ended.
        self._add("rx", received, note, ms, self._last_rx_wall if received else time.time())

    def _add(self, direction: str, data: bytes, note: str, ms: float | None, ts: float | None = None) -> None:
        shown = data.decode("ascii", "replace").strip() if self._text else data.hex(" ")
        self.events.append(TraceEvent(ts=ts or time.time(), dir=direction, data=shown, note=note, ms=ms))

