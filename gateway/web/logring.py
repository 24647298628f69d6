"""The page's log: the gateway's last log lines (INFO and above), kept in memory.

The gateway logs one line per state change (device lost or back, broker lost or back, reloads),
never one per poll, so a ring of 200 lines covers hours to weeks. The ring is a ``logging.Handler``
on the gateway's logger: it sees what the journal sees, formatted the same way.
"""

from __future__ import annotations

import collections
import itertools
import logging
from typing import Any

# The line `gateway run` writes (gateway.cli.main.setup_logging, outside the journal); a test holds them equal.
DEFAULT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MAX_TEXT = 2000  # characters; a traceback is cut there, the page is no place for a long one


class LogRing(logging.Handler):
    """The last ``size`` records of the logger it is installed on, as dicts (``lines()``)."""

    def __init__(self, size: int = 200, level: int = logging.INFO) -> None:
        super().__init__(level)
        self._records: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self._seq = itertools.count(1)
        self._logger: logging.Logger | None = None

    def install(self, logger: logging.Logger, formatter: logging.Formatter | None = None) -> LogRing:
        """Keep ``logger``'s records from now on (and its children's), formatted by ``formatter``
        (default: the line `gateway run` writes to stderr, DEFAULT_FORMAT)."""
        self.remove()
        self.setFormatter(formatter or logging.Formatter(DEFAULT_FORMAT))
        logger.addHandler(self)
        self._logger = logger
        return self

    def remove(self) -> None:
        """Stop keeping records (those kept stay readable)."""
        if self._logger is not None:
            self._logger.removeHandler(self)
            self._logger = None

    def emit(self, record: logging.LogRecord) -> None:
        # Called under the handler's lock (logging.Handler.handle).
        try:
            text = self.format(record)
        except Exception:  # a bad %-argument: logging's own report, the ring carries on
            self.handleError(record)
            return
        self._records.append({
            "seq": next(self._seq),
            "ts": record.created,
            "level": record.levelname,
            "logger": record.name,
            "message": record.message[:MAX_TEXT],  # set by format()
            "text": text[:MAX_TEXT],
        })

    def lines(self, after: int = 0) -> list[dict[str, Any]]:
        """The records kept, oldest first, as dicts: ``seq`` (1, 2, ... in arrival order, to ask for
        what is new), ``ts`` (epoch seconds), ``level``, ``logger``, ``message``, ``text`` (the
        formatted line); only those with ``seq`` above ``after``."""
        with self.lock:  # type: ignore[union-attr]  # createLock() made it in __init__
            return [r for r in self._records if r["seq"] > after]
