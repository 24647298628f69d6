"""Fleet configuration over MQTT end to end: `gateway run` as a process, a real Mosquitto, `trial: 5s`.

The test plays the platform: it signs requests with a key pair of its own (the gateway trusts the
public half), publishes them on ``city/gw-test/config/set|get`` and reads ``config/result`` and the
retained ``config/state``.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import paho.mqtt.publish as paho_publish
import pytest
import yaml

from gateway.fleet.envelope import keygen, sign
from tests.support.broker import Mosquitto, Subscriber, first_arrivals, seqs_by_device, telemetry
from tests.support.gateway_proc import GatewayProcess, base_config, new_gateway, run_cli, write_config
from tests.support.ports import free_port
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

PREFIX = "city/gw-test"
TRIAL = 5.0
SECRET = "Lit3ral-s3cret-pw"


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    private, public = keygen()
    other, _ = keygen()
    paths = {"key": tmp_path / "fleet.key", "pub": tmp_path / "fleet.pub", "other": tmp_path / "other.key"}
    paths["key"].write_bytes(private)
    paths["pub"].write_bytes(public)
    paths["other"].write_bytes(other)
    return paths


def _sim(name: str, interval: str = "50ms") -> dict[str, Any]:
    return {"name": name, "driver": "simulated", "interval": interval, "points": [{"name": "n", "signal": "counter"}]}


def fleet_config(tmp_path: Path, port: int, keys: dict[str, Path], **mqtt: Any) -> dict[str, Any]:
    config = base_config(tmp_path / "data", port)
    config["mqtt"] |= mqtt
    config["gateway"]["clock"] = {"check": "timesyncd", "synced_file": str(tmp_path / "synced")}
    (tmp_path / "synced").write_text("")
    config["fleet"] = {"enabled": True, "trust": [str(keys["pub"])], "trial": f"{TRIAL:g}s"}
    config["devices"] = [_sim("a")]
    return config


class Platform:
    """Signs and publishes requests; reads results and the state (a subscriber on everything)."""

    def __init__(self, mosquitto: Mosquitto, keys: dict[str, Path], sub: Subscriber) -> None:
        self.mosquitto, self.keys, self.sub = mosquitto, keys, sub
        self.n = 0

    def publish(self, kind: str, payload: str | bytes, *, retain: bool = False) -> None:
        paho_publish.single(f"{PREFIX}/config/{kind}", payload, qos=1, retain=retain,
                            hostname=self.mosquitto.host, port=self.mosquitto.port)

    def body(self, kind: str = "set", *, config: dict[str, Any] | str | None = None, version: int = 1,
             expect: str = "", **extra: Any) -> dict[str, Any]:
        self.n += 1
        body: dict[str, Any] = {"gateway": "gw-test", "id": f"r-{self.n}", "expires": int(time.time() * 1000) + 60_000}
        if kind == "set":
            text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
            body |= {"version": version, "expect": expect, "config": text}
        return body | extra

    def envelope(self, body: dict[str, Any], key: str = "key") -> str:
        return json.dumps(sign(self.keys[key].read_bytes(), body))

    def request(self, kind: str, body: dict[str, Any], *, key: str = "key") -> str:
        self.publish(kind, self.envelope(body, key))
        return str(body["id"])

    def results(self, id: str | None) -> list[dict[str, Any]]:
        return [m.doc for m in self.sub.messages if m.topic == f"{PREFIX}/config/result" and m.doc["id"] == id]

    def wait_result(self, id: str | None, result: str, timeout: float = 20.0) -> dict[str, Any]:
        self.sub.wait_for(lambda _: any(r["result"] == result for r in self.results(id)), timeout=timeout)
        return next(r for r in self.results(id) if r["result"] == result)

    def states(self) -> list[dict[str, Any]]:
        return [m.doc for m in self.sub.messages if m.topic == f"{PREFIX}/config/state"]

    def state(self) -> dict[str, Any]:
        states = self.states()
        return states[-1] if states else {}

    def start(self, gw: GatewayProcess) -> dict[str, Any]:
        """Start ``gw`` and wait until it listens: its session sends the state after subscribing to
        config/set and config/get (a request sent before that would be lost: the session is clean)."""
        seen = len(self.states())
        gw.start()
        self.sub.wait_for(lambda _: len(self.states()) > seen, timeout=20)
        return gw.wait_status(lambda s: s["broker"]["connected"] and s["devices"]["a"]["seq"] > 0)

    def wait_state(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20.0) -> dict[str, Any]:
        self.sub.wait_for(lambda _: bool(self.state()) and predicate(self.state()), timeout=timeout)
        return self.state()


@pytest.fixture
def platform(mosquitto: Mosquitto, keys: dict[str, Path]) -> Iterator[Platform]:
    with Subscriber(mosquitto.host, mosquitto.port, "#") as sub:
        yield Platform(mosquitto, keys, sub)


class Running(NamedTuple):
    """A gateway of the fleet config, started and seen by the platform: its config, its process and
    the state it first reported."""

    config: dict[str, Any]
    gw: GatewayProcess
    before: dict[str, Any]


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: Mosquitto, keys: dict[str, Path], platform: Platform,
          gateways: list[GatewayProcess]) -> Running:
    config = fleet_config(tmp_path, mosquitto.port, keys)
    gw = new_gateway(tmp_path, config, gateways)
    return Running(config, gw, platform.start(gw))


def _hup(gw: GatewayProcess) -> None:
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)


def test_a_push_adds_a_device_survives_a_restart_and_a_local_edit_wins(
    fleet: Running, platform: Platform,
) -> None:
    config, gw, before = fleet
    assert before["config"]["source"] == "local" and before["config"]["fleet_version"] is None
    platform.wait_state(lambda s: s["source"] == "local" and s["hash"] == before["config_hash"])
    pushed = dict(config, devices=[_sim("a"), _sim("b")])
    envelope = platform.envelope(platform.body(config=pushed, version=1, expect=before["config_hash"]))
    platform.publish("set", envelope)
    trial = platform.wait_result("r-1", "trial")
    applied = platform.wait_result("r-1", "applied", timeout=TRIAL + 10)
    assert applied["hash"] == trial["hash"] != before["config_hash"] and applied["version"] == 1
    assert [r["result"] for r in platform.results("r-1")] == ["trial", "applied"]
    platform.sub.wait_for(lambda ms: any(d["device"] == "b" for d in telemetry(ms)), timeout=20)
    state = platform.wait_state(lambda s: s["source"] == "fleet" and s["state"] == "running")
    assert state["version"] == 1 and state["hash"] == applied["hash"] and state["last"]["result"] == "applied"
    assert (gw.data_dir / "last-good.yaml").read_text().count("name: b") == 1  # only applied updates it

    # a restart keeps the pushed config; a replay of the same push is refused, also after the restart
    assert gw.terminate() == 0
    platform.start(gw)
    status = gw.wait_status(lambda s: s["broker"]["connected"] and "b" in s["devices"])
    assert status["config"]["source"] == "fleet" and status["config"]["fleet_version"] == 1
    assert status["config_hash"] == applied["hash"]
    assert "from the fleet: version 1" in run_cli("status", "-c", str(gw.config_path)).stdout
    assert "a fleet config (version 1" in run_cli("check", "-c", str(gw.config_path)).stdout
    platform.publish("set", envelope)
    assert "replay" in platform.wait_result("r-1", "refused")["error"]

    # a technician's edit wins at the next reload; the state shows the drift
    config["devices"] = [_sim("a", "40ms")]
    write_config(gw.config_path, config)
    _hup(gw)
    status = gw.wait_status(lambda s: s["config"]["source"] == "local" and set(s["devices"]) == {"a"})
    assert status["config"]["fleet_version"] is None
    state = platform.wait_state(lambda s: s["source"] == "local")
    assert state["version"] is None and state["hash"] == status["config_hash"] != applied["hash"]
    assert "changed since fleet push r-1" in gw.log()


def test_fleet_local_returns_to_the_local_file(
    fleet: Running, platform: Platform,
) -> None:
    config, gw, before = fleet
    pushed = dict(config, devices=[_sim("a"), _sim("b")])
    platform.request("set", platform.body(config=pushed, version=3, expect=before["config_hash"]))
    platform.wait_result("r-1", "applied", timeout=TRIAL + 10)
    done = run_cli("fleet", "local", "-c", str(gw.config_path))
    assert done.returncode == 0, done.stderr
    status = gw.wait_status(lambda s: s["config"]["source"] == "local")
    assert set(status["devices"]) == {"a"} and status["config_hash"] == before["config_hash"]
    platform.wait_state(lambda s: s["source"] == "local" and s["hash"] == before["config_hash"])


def test_a_push_to_a_dead_broker_rolls_back_and_no_seq_is_missing(
    fleet: Running, platform: Platform, mosquitto: Mosquitto,
) -> None:
    config, gw, before = fleet
    dead = dict(config, mqtt=dict(config["mqtt"], port=free_port()))
    # a second push right behind it finds the first in its trial: refused (answered once the old broker is back)
    first = platform.envelope(platform.body(config=dead, version=1, expect=before["config_hash"]))
    second = platform.envelope(platform.body(config=config, version=2, expect=before["config_hash"]))
    paho_publish.multiple([{"topic": f"{PREFIX}/config/set", "payload": p, "qos": 1} for p in (first, second)],
                          hostname=mosquitto.host, port=mosquitto.port)
    platform.wait_result("r-1", "trial")
    started = time.monotonic()
    rolled = platform.wait_result("r-1", "rolled_back", timeout=TRIAL + 15)
    assert time.monotonic() - started < TRIAL + 15
    assert "no status reached the broker" in rolled["error"] and rolled["hash"] == before["config_hash"]
    assert "still in its trial" in platform.wait_result("r-2", "refused")["error"]
    assert [r["result"] for r in platform.results("r-1")] == ["trial", "rolled_back"]
    status = gw.wait_status(lambda s: s["broker"]["connected"])
    assert status["config_hash"] == before["config_hash"] and status["config"]["source"] == "local"
    state = platform.wait_state(lambda s: s["state"] == "rolled_back")
    assert state["last"]["id"] == "r-1" and state["last"]["result"] == "rolled_back"
    # every reading arrived: the seqs of device a run without a gap up to the last one the status gave
    last = gw.wait_status(lambda s: s["devices"]["a"]["seq"] > status["devices"]["a"]["seq"])["devices"]["a"]["seq"]
    msgs = platform.sub.wait_for(lambda ms: max(seqs_by_device(ms).get("a", [0])) >= last, timeout=20)
    seqs = first_arrivals(seqs_by_device(msgs)["a"])
    assert sorted(set(seqs)) == list(range(min(seqs), max(seqs) + 1))


def test_kill_during_a_trial_starts_the_previous_config(
    fleet: Running, platform: Platform,
) -> None:
    config, gw, before = fleet
    dead = dict(config, mqtt=dict(config["mqtt"], port=free_port()), devices=[_sim("a"), _sim("b")])
    platform.request("set", platform.body(config=dead, version=1, expect=before["config_hash"]))
    platform.wait_result("r-1", "trial")
    gw.wait_status(lambda s: "b" in s["devices"])  # the pushed config runs, on trial
    gw.kill()
    gw.start()
    status = gw.wait_status(lambda s: s["broker"]["connected"])
    assert status["config_hash"] == before["config_hash"] and set(status["devices"]) == {"a"}
    assert status["config"]["source"] == "local"
    rolled = platform.wait_result("r-1", "rolled_back")
    assert "restarted during the trial" in rolled["error"]
    platform.wait_state(lambda s: s["state"] == "rolled_back" and s["hash"] == before["config_hash"])


def test_a_sighup_during_a_trial_rolls_it_back_as_a_local_reload(
    fleet: Running, platform: Platform,
) -> None:
    config, gw, before = fleet
    dead = dict(config, mqtt=dict(config["mqtt"], port=free_port()))
    platform.request("set", platform.body(config=dead, version=1, expect=before["config_hash"]))
    platform.wait_result("r-1", "trial")
    gw.wait_status(lambda s: s["config"]["source"] == "fleet" and s["config"]["fleet_version"] == 1)
    _hup(gw)
    rolled = platform.wait_result("r-1", "rolled_back", timeout=TRIAL + 10)
    assert rolled["error"] == "local reload"
    status = gw.wait_status(lambda s: s["broker"]["connected"])
    assert status["config_hash"] == before["config_hash"] and status["config"]["source"] == "local"
    # the pushed settings never became the last good config; the previous one did
    gw.wait_status(lambda s: (gw.data_dir / "last-good.yaml").exists())
    assert str(dead["mqtt"]["port"]) not in (gw.data_dir / "last-good.yaml").read_text()


def _refusals(p: Platform, config: dict[str, Any], expect: str) -> list[tuple[str, str, str]]:
    """(kind, envelope, words the error must hold) for each refusal that needs no special timing."""
    def push(**kw: Any) -> dict[str, Any]:
        return p.body(config=kw.pop("config", config), version=kw.pop("version", 50), expect=kw.pop("expect", expect),
                      **kw)

    def changed(section: str, **values: Any) -> dict[str, Any]:
        return dict(config, **{section: dict(config.get(section, {}), **values)})

    now = int(time.time() * 1000)
    bad_check = dict(config, devices=[dict(_sim("a"), interval="fast")])
    return [
        ("set", p.envelope(push(gateway="gw-other")), "for gateway 'gw-other'"),
        ("set", p.envelope(push(expires=now - 1000)), "expired"),
        ("set", p.envelope(push(expires=now + 2 * 3600 * 1000)), "more than an hour ahead"),
        ("get", p.envelope(p.body("get", expires=now - 1000)), "expired"),
        ("set", p.envelope(push(), key="other"), "bad signature"),
        ("set", json.dumps({"body": json.dumps(push())}), "not signed"),
        ("set", p.envelope(push(version=50, expect="0123456789ab")), "not the running config"),
        ("set", p.envelope(push(config=bad_check)), "devices[0].interval"),
        ("set", p.envelope(push(config=changed("fleet", trial="6s"))), "fleet section"),
        ("set", p.envelope(push(config=changed("buffer", max_mb=17))), "buffer section"),
        ("set", p.envelope(push(config=changed("gateway", id="gw-test", data_dir="/tmp/elsewhere"))),
         "gateway section"),
        ("set", p.envelope(push(config=dict(config, include=["conf.d/*.yaml"]))), "include"),
        ("set", p.envelope(push(config=changed("mqtt", client_id="***"))), "has no value there"),
    ]


def test_every_refusal_leaves_the_running_config_and_no_secret_leaves_the_gateway(
    tmp_path: Path, mosquitto: Mosquitto, keys: dict[str, Path], platform: Platform,
    gateways: list[GatewayProcess],
) -> None:
    config = fleet_config(tmp_path, mosquitto.port, keys, username="gw", password=SECRET)
    # a retained request is never executed: one waits on the broker before the gateway subscribes
    retained_id = "r-retained"
    platform.publish("set", platform.envelope(platform.body(config=config, version=60, expect="x", id=retained_id)),
                     retain=True)
    gw = new_gateway(tmp_path, config, gateways)
    hash = platform.start(gw)["config_hash"]
    assert "retained" in platform.wait_result(retained_id, "refused")["error"]
    platform.publish("set", b"", retain=True)  # clear it

    platform.publish("set", b"{not json")
    assert "malformed JSON" in platform.wait_result(None, "refused")["error"]
    for kind, envelope, words in _refusals(platform, config, hash):
        id = json.loads(json.loads(envelope)["body"])["id"]
        platform.publish(kind, envelope)
        refused = platform.wait_result(id, "refused")
        assert words in refused["error"], (words, refused)
        assert refused["hash"] == hash and gw.status()["config_hash"] == hash
        if words == "devices[0].interval":  # gateway check's message: the request, the line, the field
            assert refused["error"].startswith(f"push {id}:") and refused["error"].split(":")[1].isdigit()

    # get: the running YAML, the literal password as "***"; pushed back, "***" keeps the password
    got = platform.wait_result(platform.request("get", platform.body("get")), "config")
    fetched = yaml.safe_load(got["config"])
    assert fetched["mqtt"]["password"] == "***" and fetched["devices"][0]["name"] == "a"
    fetched["devices"].append(_sim("b"))
    applied = platform.wait_result(platform.request("set", platform.body(config=fetched, version=70, expect=hash)),
                                   "applied", timeout=TRIAL + 10)
    assert SECRET in (gw.data_dir / "fleet.yaml").read_text()  # kept, on the gateway only
    gw.wait_status(lambda s: s["config_hash"] == applied["hash"] and s["broker"]["connected"])

    # the clock: while it is not synchronized, nothing is executed
    (tmp_path / "synced").unlink()

    def clock_refusal() -> bool:
        id = platform.request("get", platform.body("get"))
        found = platform.sub.wait_for(lambda _: bool(platform.results(id)), timeout=10)
        return bool(found) and "not synchronized" in str(platform.results(id)[0].get("error"))

    wait_until(clock_refusal, 20, "a refusal for the unsynchronized clock", every=0.5)
    assert gw.status()["config_hash"] == applied["hash"]

    requests = (f"{PREFIX}/config/set", f"{PREFIX}/config/get")  # the platform's own (they carry whole configs)
    leaked = [m.topic for m in platform.sub.messages if SECRET.encode() in m.payload and m.topic not in requests]
    assert leaked == []
    assert SECRET not in gw.log()
