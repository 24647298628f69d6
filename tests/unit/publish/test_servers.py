"""The broker's nodes: parsing ``mqtt.servers``, the order they are tried in, the rounds."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.config.settings import MqttSection, ServerAddress, parse_server
from gateway.publish.servers import Rotation, node_order


@pytest.mark.parametrize(("text", "expected"), [
    ("broker-1.city.example:8883", ("broker-1.city.example", 8883)),
    ("broker-2.city.example", ("broker-2.city.example", 1884)),
    ("[fd00::7]:8883", ("fd00::7", 8883)),
    ("[FD00:0::7]", ("fd00::7", 1884)),
    ("10.20.0.7:8883", ("10.20.0.7", 8883)),
    ("10.20.0.7", ("10.20.0.7", 1884)),
    (" localhost ", ("localhost", 1884)),
])
def test_a_server_entry_is_host_and_port_with_mqtt_port_as_default(text: str, expected: tuple[str, int]) -> None:
    assert parse_server(text, 1884) == ServerAddress(*expected)


@pytest.mark.parametrize(("text", "says"), [
    ("fd00::7", "goes in brackets"),
    ("[fd00::zz]:1", "not an IPv6 address"),
    ("[]:1", "not an IPv6 address"),
    ("b:0", "from 1 to 65535"),
    ("b:65536", "from 1 to 65535"),
    ("b:x", "from 1 to 65535"),
    ("b:", "from 1 to 65535"),
    ("10.0.0.256", "not an IPv4 address"),
    ("1.2.3", "not an IPv4 address"),
    ("under_score", "not a host name"),
    ("-lead", "not a host name"),
    ("", "not host:port"),
    ("a:1:2", "goes in brackets"),
    ("[fd00::7]x", "not host:port"),
])
def test_a_bad_server_entry_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_server(text, 1883)


def test_str_is_the_form_of_the_log_and_status() -> None:
    assert [str(n) for n in MqttSection(servers=["a:1", "[::1]:2", "b"], port=3).nodes] == ["a:1", "[::1]:2", "b:3"]


def test_host_and_port_are_a_list_of_one() -> None:
    section = MqttSection(host="broker.example.org", port=8883)
    assert section.nodes == (ServerAddress("broker.example.org", 8883),)
    assert section.failover.order == "ordered" and section.failover.fail_back_after == 600.0


@pytest.mark.parametrize(("kw", "loc", "says"), [
    ({"host": "a", "servers": ["b"]}, ("servers",), "not both"),
    ({"servers": []}, ("servers",), "at least one"),
    ({"servers": ["a", "a:1883"]}, ("servers",), "listed twice"),
    ({"servers": ["a", "fd00::1"]}, ("servers", 1), "brackets"),
    ({}, (), "required key 'host' is missing"),
    ({"servers": ["a"], "failover": {"order": "roundrobin"}}, ("failover", "order"), "ordered"),
    ({"servers": ["a"], "failover": {"fail_back_after": "-5s"}}, ("failover", "fail_back_after"), "0: never"),
])
def test_config_errors_name_the_field(kw: dict[str, object], loc: tuple[object, ...], says: str) -> None:
    with pytest.raises(ValidationError) as caught:
        MqttSection(**kw)  # type: ignore[arg-type]
    errors = caught.value.errors()
    assert any(tuple(e["loc"]) == loc and says in e["msg"] for e in errors), errors


@pytest.mark.parametrize("never", [0, "0", "0s", "0m", 0.0])
def test_fail_back_after_zero_is_never(never: object) -> None:
    assert MqttSection(servers=["a"], failover={"fail_back_after": never}).failover.fail_back_after == 0.0


NODES = [ServerAddress(f"broker-{i}", 1883) for i in range(1, 6)]


def test_ordered_keeps_the_list_as_written() -> None:
    assert node_order(NODES, "ordered", "gw-1") == NODES


def test_random_is_stable_per_gateway_and_spreads_a_fleet() -> None:
    assert node_order(NODES, "random", "gw-1") == node_order(NODES, "random", "gw-1")
    assert sorted(node_order(NODES, "random", "gw-1"), key=NODES.index) == NODES  # a permutation
    firsts = {node_order(NODES, "random", f"gw-{i}")[0] for i in range(100)}
    assert firsts == set(NODES), "a hundred gateways do not spread over five nodes"
    counts = [sum(node_order(NODES, "random", f"gw-{i}")[0] == n for i in range(1000)) for n in NODES]
    assert min(counts) > 120, counts  # about 200 each


def test_a_round_tries_each_node_once_from_the_one_after_the_last_used() -> None:
    a, b, c = NODES[:3]
    rotation = Rotation([a, b, c])
    assert rotation.next() == a and rotation.primary == a
    rotation.failed(a, "refused")
    assert rotation.next() == b
    rotation.failed(b, "no CONNACK")
    assert rotation.next() == c
    rotation.failed(c, "refused")
    assert rotation.next() is None
    assert rotation.summary() == "broker-1:1883: refused; broker-2:1883: no CONNACK; broker-3:1883: refused"
    rotation.restart()
    assert rotation.next() == a and not rotation.failures


def test_a_lost_session_moves_on_and_the_lost_node_comes_last() -> None:
    a, b, c = NODES[:3]
    rotation = Rotation([a, b, c])
    rotation.restart(at=b)  # b served well, then was lost: a fresh round after it
    rotation.failed(b, "keepalive")
    assert rotation.next() == c
    rotation.failed(c, "refused")
    assert rotation.next() == a
    rotation.failed(a, "refused")
    assert rotation.next() is None


def test_all_refused_only_when_every_node_refused_the_login() -> None:
    a, b = NODES[:2]
    rotation = Rotation([a, b])
    rotation.failed(a, "not authorised", refused=True)
    assert not rotation.all_refused()
    rotation.failed(b, "connection refused")
    assert not rotation.all_refused()
    rotation.restart()
    rotation.failed(a, "not authorised", refused=True)
    rotation.failed(b, "not authorised", refused=True)
    assert rotation.all_refused()


def test_one_node_summary_is_the_reason_alone() -> None:
    rotation = Rotation(NODES[:1])
    rotation.failed(NODES[0], "no CONNACK within 1 s")
    assert rotation.summary() == "no CONNACK within 1 s"
