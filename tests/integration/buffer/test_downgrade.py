"""A rollback, with the real daemon: a newer gateway (this code with the buffer's schema version raised
by one) buffers readings while the broker is away and stops; this gateway then starts on its data
directory. It either sends that file's readings (the newer layout says older gateways can use it) or
sets the file aside whole, with one log line, and numbers each device on above the marks: a seq is
never given twice, and new readings flow.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.buffer import schema
from tests.support.broker import Mosquitto, Subscriber
from tests.support.faults import readings_by_key, sim_device
from tests.support.gateway_proc import GatewayProcess, base_config, new_gateway

pytestmark = pytest.mark.integration

NEWER = schema.SCHEMA_VERSION + 1

# Loaded at the newer gateway's interpreter start, before the buffer is imported: the "newer build".
_NEWER_BUILD = """\
from gateway.buffer import schema

schema.SCHEMA_VERSION += 1
schema.MIGRATIONS += ((),)
if {incompatible}:  # its layout is one older gateways cannot use
    schema.FORMAT = schema.SCHEMA_VERSION
"""


def _newer_env(where: Path, *, incompatible: bool) -> dict[str, str]:
    where.mkdir(parents=True, exist_ok=True)
    (where / "sitecustomize.py").write_text(_NEWER_BUILD.format(incompatible=incompatible))
    return {"PYTHONPATH": str(where)}


def _query(db: Path, sql: str) -> Any:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


def _newer_run(tmp_path: Path, mosquitto: Mosquitto, gateways: list[GatewayProcess], *,
               incompatible: bool) -> tuple[Path, dict[str, Any], int]:
    """The newer gateway polls with no broker, then stops cleanly: the data directory, its config,
    and the readings it buffered (seq 1..that)."""
    data = tmp_path / "data"
    config = base_config(data, mosquitto.port, commit="100ms")
    config["devices"] = [sim_device("dev-a", "10ms", tmp_path / "never")]
    mosquitto.stop()
    env = _newer_env(tmp_path / "build", incompatible=incompatible)
    newer = new_gateway(tmp_path / "newer", config, gateways, env=env)
    newer.start()
    newer.wait_status(lambda s: s["devices"]["dev-a"]["seq"] >= 300, timeout=30)
    assert newer.terminate() == 0, newer.log()
    db = data / "buffer.db"
    assert _query(db, "PRAGMA user_version") == NEWER
    buffered = _query(db, "SELECT sum(n) FROM batch")
    assert _query(db, "SELECT value FROM meta WHERE key = 'seq:dev-a'") == buffered + 1  # nothing was sent
    mosquitto.start()
    return data, config, buffered


def test_a_newer_file_this_gateway_cannot_use_is_set_aside_and_seq_goes_on(
    tmp_path: Path, mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], gateways: list[GatewayProcess],
) -> None:
    (tmp_path / "newer").mkdir()
    data, config, buffered = _newer_run(tmp_path, mosquitto, gateways, incompatible=True)
    sub = subscribe("city/gw-test/+/telemetry")
    gw = new_gateway(tmp_path, config, gateways).start()
    msgs = sub.wait_for(lambda ms: len(readings_by_key(ms)) >= 200, timeout=30)
    seqs = sorted(seq for _, seq in readings_by_key(msgs))
    assert seqs[0] == buffered + 1, "seq did not continue right above the newer gateway's marks"
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert gw.terminate() == 0
    lines = [line for line in gw.log().splitlines() if "newer gateway" in line or "seq marks" in line]
    assert len(lines) == 1 and "set aside" in lines[0], gw.log()
    aside = [p for p in data.glob("buffer.db.newer-*") if not p.name.endswith(("-wal", "-shm"))]
    assert len(aside) == 1 and str(aside[0]) in lines[0]
    assert _query(aside[0], "PRAGMA user_version") == NEWER
    assert _query(aside[0], "SELECT sum(n) FROM batch") == buffered, "the newer file lost readings"
    assert _query(aside[0], "PRAGMA integrity_check") == "ok"
    assert _query(data / "buffer.db", "PRAGMA user_version") == schema.SCHEMA_VERSION


def test_a_newer_file_this_gateway_can_use_is_sent_as_it_is(
    tmp_path: Path, mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], gateways: list[GatewayProcess],
) -> None:
    (tmp_path / "newer").mkdir()
    data, config, buffered = _newer_run(tmp_path, mosquitto, gateways, incompatible=False)
    sub = subscribe("city/gw-test/+/telemetry")
    gw = new_gateway(tmp_path, config, gateways).start()
    msgs = sub.wait_for(lambda ms: len(readings_by_key(ms)) >= buffered + 100, timeout=30)
    seqs = sorted(seq for _, seq in readings_by_key(msgs))
    assert seqs[:buffered + 100] == list(range(1, buffered + 101)), "the newer gateway's readings were not all sent"
    assert gw.terminate() == 0
    assert "newer gateway" not in gw.log() and not list(data.glob("buffer.db.*"))
    assert _query(data / "buffer.db", "PRAGMA user_version") == NEWER
