"""What a reload restarts, how reloads queue, and where the last good config is kept and found."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.config import lastgood
from gateway.config.load import load_config
from gateway.daemon.reload import ConfigDiff, ReloadQueue, diff

BASE = """\
gateway: {{id: gw1, data_dir: {data}}}
mqtt: {{host: {host}}}
buffer: {{max_mb: {max_mb}}}
devices:
  - {{name: a, driver: simulated, interval: 1s, points: [{{name: x}}]}}
  - {{name: b, driver: simulated, interval: {b_interval}, points: [{{name: x}}]}}
"""


def _config(tmp_path: Path, name: str, *, host: str = "h1", max_mb: int = 10, b_interval: str = "1s", extra: str = ""):
    path = tmp_path / name
    path.write_text(BASE.format(data=tmp_path, host=host, max_mb=max_mb, b_interval=b_interval) + extra)
    return load_config(path)


def test_unchanged_config_changes_nothing(tmp_path: Path) -> None:
    change = diff(_config(tmp_path, "a.yaml"), _config(tmp_path, "b.yaml"))
    assert change == ConfigDiff()  # nothing to stop, start or renew


def test_changed_added_removed_devices(tmp_path: Path) -> None:
    old = _config(tmp_path, "a.yaml")
    new = _config(tmp_path, "b.yaml", b_interval="2s",
                  extra="  - {name: c, driver: simulated, points: [{name: y}]}\n")
    change = diff(old, new)
    assert [d.name for d in change.changed] == ["b"]
    assert [d.name for d in change.added] == ["c"]
    assert change.removed == [] and not change.mqtt_changed and change.restart_pending == []


def test_mqtt_and_restart_sections(tmp_path: Path) -> None:
    change = diff(_config(tmp_path, "a.yaml"), _config(tmp_path, "b.yaml", host="h2", max_mb=20))
    assert change.mqtt_changed and change.restart_pending == ["buffer"] and not change.changed


def test_save_is_atomic_private_and_skips_identical_content(tmp_path: Path) -> None:
    source = "gateway: {id: gw1}\nmqtt: {password: ${MQTT_PASSWORD}}  # from the environment\n"
    assert lastgood.save(tmp_path, source) is True
    saved = tmp_path / lastgood.FILE_NAME
    assert saved.stat().st_mode & 0o777 == 0o600
    assert "${MQTT_PASSWORD}" in saved.read_text()  # references are kept, never resolved secrets
    mtime = saved.stat().st_mtime_ns
    assert lastgood.save(tmp_path, source) is False and saved.stat().st_mtime_ns == mtime
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    "text",
    ["gateway: {id: gw1, data_dir: DIR}\nmqtt: [\n", "gateway:\n  id: gw1\n  data_dir: 'DIR'  # here\n  bad: : :\n"],
)
def test_find_reads_the_data_dir_even_from_a_broken_file(tmp_path: Path, text: str) -> None:
    data = tmp_path / "state"
    data.mkdir()
    lastgood.save(data, "gateway: {id: gw1}\n")
    path = tmp_path / "gateway.yaml"
    path.write_text(text.replace("DIR", str(data)))
    assert lastgood.find(path) == data / lastgood.FILE_NAME


def test_find_uses_systemd_state_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    path = tmp_path / "gateway.yaml"
    path.write_text("not: [valid")
    assert lastgood.find(path) is None
    lastgood.save(tmp_path, "gateway: {id: gw1}\n")
    assert lastgood.find(path) == tmp_path / lastgood.FILE_NAME


def test_the_last_good_copy_is_the_file_as_written_or_the_merged_includes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_HOST", "broker.example.org")
    text = f"# site 7\ngateway: {{id: gw1, data_dir: {tmp_path}}}\nmqtt: {{host: '${{MQTT_HOST}}'}}\n"
    (tmp_path / "plain.yaml").write_text(text)
    assert load_config(tmp_path / "plain.yaml").source == text  # comments and ${...} kept as written
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "a.yaml").write_text("devices:\n  - {name: a, driver: simulated, points: [{name: x}]}\n")
    (tmp_path / "main.yaml").write_text(text + "include: [conf.d/*.yaml]\n")
    config = load_config(tmp_path / "main.yaml")
    assert config.mqtt.host == "broker.example.org"
    lastgood.save(tmp_path, config.source)
    saved = (tmp_path / lastgood.FILE_NAME).read_text()
    assert "${MQTT_HOST}" in saved and "include" not in saved
    again = load_config(tmp_path / lastgood.FILE_NAME)  # loads on its own, the devices inlined
    assert [d.name for d in again.devices] == ["a"] and again.hash == config.hash


class _FileReload:
    """A reload job that reads ``file`` when it starts and is held at its await until released."""

    def __init__(self) -> None:
        self.file = "v0"
        self.applied: list[str] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.running = self.most_at_once = 0

    async def __call__(self) -> bool:
        read = self.file
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        self.started.set()
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        self.applied.append(read)
        return True


async def test_requests_during_a_reload_give_exactly_one_more_of_the_last_file() -> None:
    queue, job = ReloadQueue(), _FileReload()
    worker = asyncio.create_task(queue.run())
    try:
        first = queue.submit(job, key="file")
        await asyncio.wait_for(job.started.wait(), 5)
        waiting = set()
        for version in range(1, 31):  # a storm of SIGHUPs while the file changes
            job.file = f"v{version}"
            waiting.add(queue.submit(job, key="file"))
        assert len(waiting) == 1 and first not in waiting  # all joined one waiting reload
        job.release.set()
        assert await asyncio.wait_for(first, 5) and await asyncio.wait_for(waiting.pop(), 5)
        assert job.applied == ["v0", "v30"] and job.most_at_once == 1
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)


async def test_a_failing_change_leaves_the_queue_running_and_cancel_drops_the_waiting() -> None:
    queue, job = ReloadQueue(), _FileReload()
    worker = asyncio.create_task(queue.run())

    async def broken() -> bool:
        raise RuntimeError("bug")

    try:
        assert await asyncio.wait_for(queue.submit(broken), 5) is False
        job.release.set()
        assert await asyncio.wait_for(queue.submit(job), 5) is True
        job.release.clear()
        job.started.clear()
        running, waiting = queue.submit(job), queue.submit(job, key="file")
        await asyncio.wait_for(job.started.wait(), 5)
        # a keyed request joins only the last one waiting: it never jumps ahead of an earlier one
        later, again = queue.submit(job), queue.submit(job, key="file")
        assert again is not waiting
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    assert all(f.cancelled() for f in (running, waiting, later, again)) and job.running == 0
