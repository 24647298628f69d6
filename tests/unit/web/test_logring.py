"""The page's log ring: the gateway's last INFO-and-above lines, formatted as on stderr, bounded."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from gateway.web.logring import DEFAULT_FORMAT, MAX_TEXT, LogRing
from tests.support import REPO


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger tree of this test alone (``ringtest.*``), at DEBUG so the ring's own level decides."""
    log = logging.getLogger("ringtest")
    log.setLevel(logging.DEBUG)
    yield log
    log.handlers.clear()


def test_the_ring_keeps_info_and_above_of_the_logger_and_its_children(logger: logging.Logger) -> None:
    ring = LogRing().install(logger)
    logger.debug("every poll: never kept")
    logging.getLogger("ringtest.poll").info("device %s lost: %s", "meter-1", "timeout")
    logger.warning("broker lost")
    logging.getLogger("elsewhere").error("not this logger")
    got = [(r["level"], r["logger"], r["message"]) for r in ring.lines()]
    assert got == [("INFO", "ringtest.poll", "device meter-1 lost: timeout"), ("WARNING", "ringtest", "broker lost")]


def test_each_line_is_formatted_as_the_gateway_writes_it(logger: logging.Logger) -> None:
    ring = LogRing().install(logger)
    logger.info("config reloaded (%s)", "abc123")
    (line,) = ring.lines()
    record = logging.LogRecord("ringtest", logging.INFO, __file__, 1, "config reloaded (%s)", ("abc123",), None)
    record.created = line["ts"]
    record.msecs = (line["ts"] - int(line["ts"])) * 1000
    assert line["text"] == logging.Formatter(DEFAULT_FORMAT).format(record)
    assert line["text"].endswith(" INFO ringtest: config reloaded (abc123)")
    assert isinstance(line["ts"], float) and line["seq"] == 1


def test_the_default_format_is_the_one_gateway_run_writes() -> None:
    code = ("import logging\nfrom gateway.cli.main import setup_logging\nsetup_logging('INFO')\n"
            "print(logging.getLogger().handlers[0].formatter._fmt)")
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=60, check=True)
    assert done.stdout.strip() == DEFAULT_FORMAT


def test_only_the_last_lines_are_kept_and_new_ones_can_be_asked_for(logger: logging.Logger) -> None:
    ring = LogRing(size=3).install(logger)
    for i in range(5):
        logger.info("change %d", i)
    assert [r["message"] for r in ring.lines()] == ["change 2", "change 3", "change 4"]
    assert [r["seq"] for r in ring.lines()] == [3, 4, 5]
    assert [r["message"] for r in ring.lines(after=4)] == ["change 4"]
    assert ring.lines(after=5) == []


def test_removed_the_ring_keeps_what_it_had_and_takes_nothing_more(logger: logging.Logger) -> None:
    ring = LogRing().install(logger)
    logger.info("before")
    ring.remove()
    logger.info("after")
    assert [r["message"] for r in ring.lines()] == ["before"]
    assert ring not in logger.handlers
    ring.install(logger)
    ring.install(logger)  # installing again moves it, never adds it twice
    assert logger.handlers.count(ring) == 1


def test_a_long_line_or_traceback_is_cut(logger: logging.Logger) -> None:
    ring = LogRing().install(logger)
    try:
        raise RuntimeError("x" * 5000)
    except RuntimeError:
        logger.exception("reload failed")
    (line,) = ring.lines()
    assert len(line["text"]) == MAX_TEXT and "Traceback" in line["text"]
    assert line["message"] == "reload failed"


def test_a_bad_log_call_is_reported_by_logging_and_the_ring_goes_on(logger: logging.Logger,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging, "raiseExceptions", False)  # logging's report to stderr, silenced here
    ring = LogRing().install(logger)
    logger.info("two args %s %s", "only one")
    logger.info("fine")
    assert [r["message"] for r in ring.lines()] == ["fine"]


def test_lines_can_be_read_while_threads_log(logger: logging.Logger) -> None:
    ring = LogRing(size=50).install(logger)

    def log_many() -> None:
        for i in range(2000):
            logger.info("line %d", i)

    threads = [threading.Thread(target=log_many) for _ in range(4)]
    for t in threads:
        t.start()
    snapshots = []
    while any(t.is_alive() for t in threads):
        snapshots.append(ring.lines())
    for t in threads:
        t.join()
    assert all(len(s) <= 50 and [r["seq"] for r in s] == sorted(r["seq"] for r in s) for s in snapshots)
    assert [r["seq"] for r in ring.lines()] == list(range(8000 - 49, 8001))
