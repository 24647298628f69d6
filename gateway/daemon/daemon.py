"""Wires the stages together: scheduler -> buffer -> publisher, plus status, signals and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.buffer.queue import Buffer
from gateway.config import lastgood
from gateway.config.load import ConfigFileError, load_config
from gateway.config.settings import Config
from gateway.control import SOCKET_NAME
from gateway.daemon.buildinfo import build_info
from gateway.daemon.control import ControlServer
from gateway.daemon.reload import ConfigDiff, ReloadQueue, diff
from gateway.daemon.systemd import notify
from gateway.daemon.watchdog import Watchdog, gateway_problem
from gateway.driver import load_driver
from gateway.poll.scheduler import DeviceTask, Scheduler
from gateway.publish.clock import WallClock
from gateway.publish.commands import Commands
from gateway.publish.publisher import Publisher

log = logging.getLogger(__name__)

RUNNING_MARKER = "running"  # present while a daemon runs; found at start = the last run did not end cleanly
STOP_BUDGET = 8.0  # seconds the shutdown may take in all (systemd and the contract allow 10)
GOODBYE_RESERVE = 3.0  # of it, seconds kept for the broker's goodbye and closing after the final flush
EXIT_UNFLUSHED = 1  # the exit status of a stop that gave up on a stalled disk (what was lost is logged)
RAN_WELL_AFTER = 30.0  # seconds up before a config counts as one that ran well (kept as last good)


class AlreadyRunning(RuntimeError):
    """Another gateway process holds the data directory."""


class _CannotStart(Exception):
    """A device of a new config cannot be started; the message says which and why."""


class Daemon:
    """One running gateway. ``await Daemon(config).run()`` returns when stopped by a signal."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.data_dir = Path(config.gateway.data_dir)
        self.started_ts = int(time.time() * 1000)
        self.clean_start = True
        # The stop gave up on a stalled disk: its writer thread is stuck, the process must not wait for it.
        self.stop_gave_up = False
        self._stop = asyncio.Event()
        self._lock_fd: int | None = None
        max_bytes = int(config.buffer.max_mb * 1024 * 1024)
        self.buffer = Buffer(self.data_dir, max_bytes=max_bytes, commit_interval=config.buffer.commit_interval)
        clock = config.gateway.clock
        self.clock = WallClock(clock.check, synced_file=clock.synced_file, hold=clock.hold,
                               chrony_port=clock.chrony_port)
        self.scheduler = Scheduler(
            sink=self.buffer.put, on_change=self._status_changed, data_dir=self.data_dir,
            congested=lambda: self.buffer.flow.congested(publishing=self.publisher.connected),
            relief=lambda: self.buffer.flow.relief(publishing=self.publisher.connected), stamp=self.clock.stamp,
        )
        # Remote commands (commands.enabled): written the way `gateway write` is through the control socket.
        self.commands = Commands(self._run_command, remember=config.commands.remember_ids)
        self.buffer.on_state_change = self._status_changed  # degraded / ok reaches the status at once
        self.publisher = self._new_publisher(config)
        self._publisher_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.reload_error: str | None = None
        self.reloads = ReloadQueue()  # every config change goes through it, one at a time
        self.restart_pending: list[str] = []
        self.control = ControlServer(self.data_dir / SOCKET_NAME, self._control)
        self.watchdog = Watchdog(lambda: gateway_problem(self.scheduler, self._publisher_task))

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        """Start everything, run until SIGTERM/SIGINT, stop in order. Returns the exit status."""
        self._prepare_data_dir()
        await self.buffer.open()
        await self.clock.start()  # which NTP client runs, known before the first reading is stamped
        publisher_task = self._publisher_task = asyncio.create_task(self.publisher.run(), name="publisher")
        for spec in self.config.devices:
            if spec.enabled:
                self.scheduler.add(spec, load_driver(spec.driver))
        await self.control.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self._spawn(self.reloads.run, "reloads")
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        self._spawn(self._keep_as_last_good, "last-good")
        if self.config.fallback:
            log.error("running the last config that ran well: %s", self.config.fallback)
        enabled = sum(1 for d in self.config.devices if d.enabled)
        log.info(
            "gateway %s %s started: %d devices, broker %s:%d, data in %s%s",
            self.config.gateway.id, __version__, enabled, self.config.mqtt.host, self.config.mqtt.port,
            self.data_dir, "" if self.clean_start else " (the last run did not stop cleanly)",
        )
        if self.config.commands.enabled:
            log.info("remote commands enabled: writes to writable points on %s", self.publisher.command_topic)
        notify("READY=1")
        self.watchdog.start()  # heartbeats while the loop and every task run (WatchdogSec=)
        try:
            await self._stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            for task in list(self._background):
                task.cancel()
            self.stop_gave_up = not await self._shutdown(self._publisher_task or publisher_task)
        return EXIT_UNFLUSHED if self.stop_gave_up else 0

    async def _shutdown(self, publisher_task: asyncio.Task[None]) -> bool:
        """Stop in order within STOP_BUDGET; False if the disk did not take the last commit in time."""
        notify("STOPPING=1")
        await self.watchdog.stop()
        log.info("stopping: flushing the buffer and saying goodbye to the broker")
        deadline = time.monotonic() + STOP_BUDGET
        await self.commands.close(timeout=1.0)  # new ones are refused; a write under way may finish
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self.scheduler.stop_all()
        flushed = True
        try:  # a stalled SD card must not hold the stop past systemd's timeout
            async with asyncio.timeout(max(0.5, deadline - time.monotonic() - GOODBYE_RESERVE)):
                await self.buffer.flush()
        except TimeoutError:
            flushed = False
        with contextlib.suppress(TimeoutError):
            await self.publisher.stop(timeout=max(0.5, deadline - time.monotonic() - 1.0))
        publisher_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await publisher_task
        await self.control.close()
        unflushed = self.buffer.uncommitted
        closed = await self.buffer.close(timeout=max(0.0, deadline - time.monotonic()) if flushed else 0.0)
        if closed:
            (self.data_dir / RUNNING_MARKER).unlink(missing_ok=True)
        else:  # the running marker stays: the next start reports clean_start: false
            log.error("stopped without flushing: the buffer's disk did not finish its writes in %.1f s;"
                      " %d readings not committed are lost (as in a power cut), %d acked batches will be"
                      " sent again", time.monotonic() - deadline + STOP_BUDGET, *unflushed)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        log.info("stopped")
        return closed

    def _prepare_data_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / "gateway.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(f"another gateway is already running with data directory {self.data_dir}") from None
        self._lock_fd = fd
        marker = self.data_dir / RUNNING_MARKER
        self.clean_start = not marker.exists()
        with open(marker, "w") as fh:
            fh.write(str(os.getpid()))
            fh.flush()
            os.fsync(fh.fileno())

    def _status_changed(self) -> None:
        self.publisher.status_changed()

    def _new_publisher(self, config: Config) -> Publisher:
        return Publisher(config.mqtt, gateway_id=config.gateway.id, buffer=self.buffer, status=self.status,
                         on_command=self.commands.handle if config.commands.enabled else None, clock=self.clock)

    async def _run_command(self, request: dict[str, Any]) -> dict[str, Any]:
        """A remote command's write: the same path as `gateway write` through the control socket."""
        from gateway.daemon.tools import run_tool_command

        return await run_tool_command(self.scheduler.tasks, request)

    def _spawn(self, factory: Any, name: str) -> None:
        task = asyncio.create_task(factory(), name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _keep_as_last_good(self) -> None:
        """Once this config has run a while, keep it as the one to fall back on."""
        if self.config.fallback:
            return
        # Ran well: the broker took our status, or the daemon stayed up a while (an unreachable
        # broker is no reason to distrust a config that polls and buffers).
        for _ in range(int(RAN_WELL_AFTER)):
            if self.publisher.connected:
                break
            await asyncio.sleep(1.0)
        try:
            if await asyncio.to_thread(lastgood.save, self.data_dir, self.config.source):
                log.info("config %s kept as the last one that ran well", self.config.hash)
        except OSError as exc:
            log.warning("could not keep the last good config: %s", exc)

    def request_reload(self) -> asyncio.Future[bool]:
        """Re-read the config file once the change under way (if any) is done (SIGHUP).

        Requests made while one waits join it: a storm of SIGHUPs gives one more reload, of the
        file as it is when that reload starts.
        """
        return self.reloads.submit(self.reload, key="file")

    async def reload(self) -> bool:
        """Re-read the config file; apply it if valid, keep the running one if not.

        Runs only through ``self.reloads`` (``request_reload``), never beside another change.
        """
        path = self.config.path
        try:
            new = await asyncio.to_thread(load_config, path)
        except ConfigFileError as exc:
            self.reload_error = str(exc)
            log.error("reload refused, the running config stays: %s is invalid:\n%s", path, exc)
            self._status_changed()
            return False
        return await self.apply_config(new)

    async def apply_config(self, new: Config) -> bool:
        """Apply a validated config whole, or not at all; returns True when applied.

        Only the devices that changed are restarted; buffered data and seq are untouched; the
        broker session is renewed only when the mqtt section (or commands.enabled) changed.
        Everything that can fail (loading drivers, constructing the new devices' tasks and the new
        publisher) is done before any running device stops, so a failure leaves the running config
        as it was: it is reported in ``config.reload_error`` and later changes diff against it.
        """
        change = diff(self.config, new)
        renew = change.mqtt_changed or new.commands.enabled != self.config.commands.enabled
        try:
            starting = self._build_devices(change)
            publisher = self._new_publisher(new) if renew else None
        except _CannotStart as exc:
            self.reload_error = str(exc)
            log.error("reload refused, the running config stays: %s", exc)
            self._status_changed()
            return False
        await self.scheduler.swap([*change.removed, *(spec.name for spec in change.changed)], starting)
        if change.restart_pending:
            log.warning("reload: changes to %s take effect at the next restart", ", ".join(change.restart_pending))
            new = replace(new, gateway=self.config.gateway, buffer=self.config.buffer)
        if new.commands.enabled != self.config.commands.enabled:
            log.info("reload: remote commands %s", "enabled" if new.commands.enabled else "disabled")
        # The running devices are the new ones from here: config and status say so before the
        # broker session is renewed, so the new session's first status is already true.
        self.config, self.reload_error, self.restart_pending = new, None, change.restart_pending
        self.commands.remember = new.commands.remember_ids
        if publisher is not None:
            await self._renew_publisher(publisher)
        log.info("config reloaded (%s): %s", new.hash, change.summary())
        self._status_changed()
        self._spawn(self._keep_as_last_good, "last-good")
        return True

    def _build_devices(self, change: ConfigDiff) -> list[DeviceTask]:
        """The tasks of the added and changed devices, built but not started (raises _CannotStart)."""
        tasks = []
        for spec in [*change.changed, *change.added]:
            if not spec.enabled:
                continue
            try:
                tasks.append(self.scheduler.build(spec, load_driver(spec.driver)))
            except Exception as exc:  # a driver that cannot load or whose constructor raises
                raise _CannotStart(
                    f"device {spec.name!r} (driver {spec.driver!r}) cannot start: {type(exc).__name__}: {exc}"
                ) from exc
        return tasks

    async def _renew_publisher(self, publisher: Publisher) -> None:
        old, old_task = self.publisher, self._publisher_task
        with contextlib.suppress(Exception):
            await old.stop(timeout=3.0)
        if old_task is not None:
            old_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await old_task
        self.publisher = publisher
        self._publisher_task = asyncio.create_task(self.publisher.run(), name="publisher")

    def status(self) -> dict[str, Any]:
        """The status document (schema 1), as published on the retained status topic."""
        stats = self.buffer.stats()
        return {
            "schema": 1,
            "state": "online",
            "version": __version__,
            "build": build_info(),
            "ts": int(time.time() * 1000),
            "started_ts": self.started_ts,
            "clean_start": self.clean_start,
            "config_hash": self.config.hash,
            "clock": {"synced": self.clock.synced(), "check": self.clock.check},
            "config": {
                "path": str(self.config.path),
                "fallback": self.config.fallback,
                "reload_error": self.reload_error,
                "restart_pending": self.restart_pending,
            },
            "buffer": {
                "state": stats.state,
                "reason": stats.reason,
                "pending": stats.pending,
                "evicted": stats.evicted,
                "bytes": stats.bytes,
                "recovered_corrupt": stats.recovered_corrupt,
                "quarantined": stats.quarantined,
            },
            "broker": {
                "connected": self.publisher.connected,
                "last_error": self.publisher.last_error,
                "messages_sent": self.publisher.messages_sent,
                "readings_sent": self.publisher.readings_sent,
                "connects": self.publisher.connects,
            },
            "devices": self._device_status(),
            "commands": {
                "enabled": self.config.commands.enabled,
                "subscribed": self.publisher.commands_subscribed,
                **self.commands.counters,
            },
        }

    def _device_status(self) -> dict[str, dict[str, Any]]:
        devices = self.scheduler.health()
        for name, entry in devices.items():
            entry["seq"] = self.buffer.next_seq(name) - 1  # the last number given to a committed reading
            counters = getattr(self.scheduler.tasks[name].driver, "counters", None)
            if counters:
                entry["counters"] = dict(counters)
        return devices

    async def _control(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "status":
            return {"ok": True, "status": self.status()}
        if cmd in ("read", "write"):
            # `gateway read` / `write`: on this daemon's own driver and connection, under the bus lock.
            from gateway.daemon.tools import run_tool_command

            return await run_tool_command(self.scheduler.tasks, request)
        return {"ok": False, "error": f"unknown command {cmd!r}"}
