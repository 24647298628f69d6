"""The fleet's files: the trial marker, the atomic apply, the version kept across restarts, the local file winning;
and the request checks that need no daemon (shape, gateway, time) and config_hash over the fleet section."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.config.load import load_config
from gateway.fleet.checks import check_body, request_id
from gateway.fleet.envelope import Refused
from gateway.fleet.store import FleetStore, local_digest

NOW = 1_800_000_000_000


def test_a_trial_is_marked_on_disk_until_applied(tmp_path: Path) -> None:
    store = FleetStore(tmp_path)
    local = tmp_path / "gateway.yaml"
    local.write_text("local: 1\n")
    meta = {"id": "r-1", "version": 4, "local": local_digest(local)}
    store.begin_trial("pushed: 1\n", meta)
    assert store.trial_meta() == meta and store.highest == 4
    assert store.in_force(local) is None  # nothing applied yet: the local file runs
    store.commit_trial()
    assert store.trial_meta() is None and store.in_force(local) == store.copy
    assert store.copy.read_text().endswith("pushed: 1\n")
    assert FleetStore(tmp_path).highest == 4  # kept for the next start


def test_a_rollback_keeps_the_copy_in_force_and_the_version_used(tmp_path: Path) -> None:
    store = FleetStore(tmp_path)
    local = tmp_path / "gateway.yaml"
    local.write_text("local: 1\n")
    store.begin_trial("one\n", {"id": "r-1", "version": 1, "local": local_digest(local)})
    store.commit_trial()
    store.begin_trial("two\n", {"id": "r-2", "version": 2, "local": local_digest(local)})
    store.abandon_trial()
    assert store.copy.read_text().endswith("one\n") and store.highest == 2 and not store.trial.exists()


def test_the_local_file_wins_once_edited(tmp_path: Path) -> None:
    store = FleetStore(tmp_path)
    local = tmp_path / "gateway.yaml"
    local.write_text("local: 1\n")
    store.begin_trial("one\n", {"id": "r-1", "version": 1, "local": local_digest(local)})
    store.commit_trial()
    local.write_text("local: 2\n")
    assert store.in_force(local) is None
    assert store.retire_copy() and not store.copy.exists()


def test_the_last_result_and_the_rollback_flag_survive(tmp_path: Path) -> None:
    FleetStore(tmp_path).set_last({"id": "r-1", "result": "rolled_back"}, rolled_back=True)
    again = FleetStore(tmp_path)
    assert again.last == {"id": "r-1", "result": "rolled_back"} and again.rolled_back


def _body(**kw: object) -> dict[str, object]:
    body: dict[str, object] = {"gateway": "gw-1", "id": "r-1", "version": 2, "expect": "abc",
                               "expires": NOW + 60_000, "config": "x"}
    return body | kw


@pytest.mark.parametrize(("body", "synced", "words"), [
    (_body(gateway="gw-2"), True, "for gateway 'gw-2'"),
    (_body(), False, "not synchronized"),
    (_body(expires=NOW - 5000), True, "expired 5 s ago"),
    (_body(expires=NOW + 3601_000), True, "more than an hour ahead"),
    (_body(version=0), True, "at least 1"),
    (_body(version=True), True, "whole number"),
    (_body(extra=1), True, "unknown key 'extra'"),
    ({k: v for k, v in _body().items() if k != "expect"}, True, "needs expect"),
])
def test_a_body_is_refused_with_a_reason(body: dict[str, object], synced: bool, words: str) -> None:
    with pytest.raises(Refused, match=words):
        check_body("set", body, "r-1", gateway_id="gw-1", synced=synced, now_ms=NOW)


def test_a_good_body_passes_and_an_unreadable_id_is_none() -> None:
    check_body("set", _body(), "r-1", gateway_id="gw-1", synced=True, now_ms=NOW)
    check_body("get", {"gateway": "gw-1", "id": "r-1", "expires": NOW + 1}, "r-1", gateway_id="gw-1",
               synced=True, now_ms=NOW)
    with pytest.raises(Refused) as info:
        request_id({"id": 17})
    assert info.value.id is None


def test_config_hash_covers_the_fleet_section(tmp_path: Path) -> None:
    base = textwrap.dedent("""\
        gateway: {id: gw-1, data_dir: /tmp/gw-1}
        mqtt: {host: broker.example.org}
        """)
    (tmp_path / "a.yaml").write_text(base)
    (tmp_path / "b.yaml").write_text(base + "fleet: {trial: 30s}\n")
    assert load_config(tmp_path / "a.yaml").hash != load_config(tmp_path / "b.yaml").hash
