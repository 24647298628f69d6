"""Serial plumbing shared by the serial drivers (serial_line, pms5003, sds011).

- ``settings``: the ``connection`` model, ``aggregate`` / ``stale_after``, one device per port.
- ``port``: an exclusively opened port on the event loop (pyserial-asyncio-fast, loaded lazily).
- ``framing``: incremental parsers; ``FrameParser`` for binary frames behind a fixed header.
- ``collect``: the values between two polls reduced to last / mean / min / max.
- ``device``: ``SerialDriver``, the driver body: open, stream or query, staleness, port loss.

Adding a binary sensor protocol takes one short ``protocol.py`` (a ``FrameParser`` subclass:
header, frame size, checksum, decode; the command frames if the sensor has any) and a driver
class that hands ``SerialDriver`` its parser, points and commands; see ``drivers/sds011``.
"""
