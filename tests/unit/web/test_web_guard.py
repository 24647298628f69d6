"""The page's safety rules as logic: Host names, Origin, sessions and CSRF tokens, the login throttle."""

from __future__ import annotations

import pytest

from gateway.web.guard import MAX_SESSIONS, HostCheck, Sessions, Throttle, same_origin, split_host


def test_split_host_reads_names_v4_and_v6_with_and_without_ports() -> None:
    assert split_host("Cabinet-7.Example.:8080") == ("cabinet-7.example", 8080)
    assert split_host("[::1]:8080") == ("::1", 8080)
    assert split_host("10.0.0.2") == ("10.0.0.2", None)
    assert split_host("x:y") == ("", None)


@pytest.mark.parametrize(("host", "ok"), [
    ("127.0.0.1:8080", True),
    ("localhost:8080", True),
    ("cabinet-7.example:8080", True),
    ("CABINET-7.example", True),
    ("attacker.example:8080", False),  # DNS rebinding: the attacker's name resolving to us
    ("127.0.0.1:9999", False),  # another port than the connection's
    ("", False),
    (None, False),
])
def test_host_check_on_a_loopback_listener(host: str | None, ok: bool) -> None:
    check = HostCheck(["127.0.0.1:8080"], ["cabinet-7.example"])
    assert check.allowed(host, ("127.0.0.1", 8080)) is ok


def test_a_wildcard_listener_answers_to_the_address_the_connection_came_in_on_only() -> None:
    check = HostCheck(["0.0.0.0:8080"], [])
    assert check.allowed("10.1.2.3:8080", ("10.1.2.3", 8080))
    assert not check.allowed("10.9.9.9:8080", ("10.1.2.3", 8080))
    assert not check.allowed("localhost:8080", ("10.1.2.3", 8080))  # not a loopback listener
    assert not check.allowed("evil.example:8080", ("10.1.2.3", 8080))
    assert HostCheck(["[::]:8080"], []).allowed("[fe80::1]:8080", ("fe80::1%eth0", 8080, 0, 2))


def test_same_origin_needs_the_scheme_and_the_host() -> None:
    assert same_origin("http://127.0.0.1:8080", "127.0.0.1:8080", tls=False)
    assert not same_origin("https://127.0.0.1:8080", "127.0.0.1:8080", tls=False)
    assert not same_origin("http://attacker.example", "127.0.0.1:8080", tls=False)
    assert not same_origin("null", "127.0.0.1:8080", tls=False)
    assert not same_origin(None, "127.0.0.1:8080", tls=False)


def test_sessions_have_their_own_csrf_token_expire_when_idle_and_are_bounded() -> None:
    sessions = Sessions(idle=60)
    one = sessions.new("10.0.0.9")
    assert sessions.get(one.token, now=one.seen + 30) is one
    assert one.csrf_ok(one.csrf) and not one.csrf_ok(one.token) and not one.csrf_ok(None)
    assert sessions.get(one.token, now=one.seen + 61) is None
    assert sessions.get("made-up") is None and sessions.get(None) is None
    made = [sessions.new("10.0.0.9") for _ in range(MAX_SESSIONS + 1)]
    assert sessions.get(made[0].token) is None and sessions.get(made[-1].token) is made[-1]
    sessions.drop(made[-1].token)
    assert sessions.get(made[-1].token) is None


def test_failed_logins_wait_doubling_up_to_30_s_and_never_lock_out() -> None:
    throttle, t = Throttle(), 1000.0
    assert throttle.wait_left("a", t) == 0
    waits = []
    for _ in range(8):
        waits.append(throttle.failed("a", t))
        assert throttle.wait_left("a", t) == waits[-1]
        assert throttle.wait_left("b", t) == 0  # per source address
        t += waits[-1]
        assert throttle.wait_left("a", t) == 0  # after the wait the next attempt is checked: no lock-out
    assert waits == [1, 2, 4, 8, 16, 30, 30, 30]
    throttle.succeeded("a")
    assert throttle.failed("a", t) == 1
    assert throttle.failed("a", t + 10_000) == 1  # an old run of failures is forgotten
