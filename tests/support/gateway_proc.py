"""Runs the real `gateway` command as a child process, for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from gateway.control import SOCKET_NAME, request
from tests.support.wait import wait_until


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def base_config(data_dir: Path, port: int, *, encoding: str = "cbor", commit: str = "200ms") -> dict[str, Any]:
    """A config talking to the test broker on 127.0.0.1:port; add devices to it."""
    return {
        "gateway": {"id": "gw-test", "data_dir": str(data_dir)},
        "mqtt": {"host": "127.0.0.1", "port": port, "encoding": encoding, "keepalive": 5, "publish_timeout": "3s"},
        "buffer": {"max_mb": 16, "commit_interval": commit},
        "devices": [],
    }


def new_gateway(tmp_path: Path, config: dict[str, Any], gateways: list[GatewayProcess],
                env: dict[str, str] | None = None) -> GatewayProcess:
    """A GatewayProcess (not started) for ``config``, written to tmp_path/gateway.yaml and added to
    ``gateways`` (the fixture that kills whatever a test left running); ``env``: extra variables."""
    gw = GatewayProcess(write_config(tmp_path / "gateway.yaml", config), Path(config["gateway"]["data_dir"]), env)
    gateways.append(gw)
    return gw


def drain_devices(gw: GatewayProcess, flags: list[Path], timeout: float = 30) -> dict[str, Any]:
    """Stop the simulated devices (create their fail flags) and wait until every device is in error
    and nothing is pending (all committed and acked); return that status."""
    for flag in flags:
        flag.write_text("stopped by the test")
    return gw.wait_status(lambda s: all(d["state"] == "error" for d in s["devices"].values())
                          and s["buffer"]["pending"] == 0, timeout=timeout)


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run `gateway ARGS...` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


class GatewayProcess:
    """`gateway run -c CONFIG` in the background, with its log in a file."""

    def __init__(self, config_path: Path, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.env = env or {}  # added to the child's environment (e.g. tests.support.plugins.plugin_env)
        self.data_dir = data_dir
        self.log_path = config_path.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True) -> GatewayProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "-c", str(self.config_path)],
            stdout=log, stderr=log, env=env,
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until the daemon answers on its control socket."""
        def answers() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.status()
                return True
            except (ConnectionError, OSError, json.JSONDecodeError):
                return False

        wait_until(answers, timeout, lambda: f"the gateway to be ready:\n{self.log()}")

    def status(self) -> dict[str, Any]:
        return request(self.data_dir / SOCKET_NAME, {"cmd": "status"}, timeout=5)["status"]

    def wait_status(self, predicate: Any, timeout: float = 20.0) -> dict[str, Any]:
        """Wait until ``predicate(status)`` holds; returns that status."""
        last: list[dict[str, Any]] = [{}]

        def matched() -> dict[str, Any] | None:
            last[0] = self.status()
            return last[0] if predicate(last[0]) else None

        return wait_until(matched, timeout, lambda: f"the status to match; last: {json.dumps(last[0], indent=1)}")

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: what a crash or a power cut looks like to the process."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
