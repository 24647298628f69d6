"""The config models: the shape of gateway.yaml. Loading and error reporting live in config.py."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.config.secrets import read_secret_file
from gateway.config.servers import ServerAddress, parse_server
from gateway.fields import Duration, Name, parse_duration

TopicPrefix = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClockSection(_Strict):
    """How to tell whether the wall clock is right (boards without a real-time clock); see gateway.publish.clock."""

    check: Literal["auto", "timesyncd", "kernel", "off"] = "auto"
    hold: Duration = 600.0  # unsynced readings wait this long for the clock, then go out marked
    synced_file: Path = Path("/run/systemd/timesync/synchronized")
    chrony_port: int = Field(default=323, ge=1, le=65535)  # chronyd's cmdport on 127.0.0.1 (check: auto)


class GatewaySection(_Strict):
    id: Name
    data_dir: Path = Path("/var/lib/gateway")
    clock: ClockSection = ClockSection()


class TlsSection(_Strict):
    """TLS to the broker. The server certificate and host name are always verified."""

    ca_file: Path | None = None  # None: the system's CAs
    cert_file: Path | None = None  # client certificate (mTLS), with key_file
    key_file: Path | None = None

    @model_validator(mode="after")
    def _files_readable(self) -> TlsSection:
        # Checked here so `gateway check` finds a wrong path; TLS would only say "No such file".
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file (the client certificate)")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not os.access(path, os.R_OK):
                raise ValueError(f"cannot read {name} {path}" + ("" if path.exists() else ": no such file"))
        return self


class BatchSection(_Strict):
    """How readings are grouped into telemetry messages (one device per message, unless ``devices`` > 1)."""

    max_readings: int = Field(default=1000, ge=1)  # readings per message at most
    # bytes per message at most (a fuller message is split by batches; one poll is never split)
    max_bytes: int = Field(default=256 * 1024, ge=256)
    # wait up to this long for a device's message to fill before sending it part full (0: never wait)
    linger: Duration = 0.0
    # devices per message at most: 1 is one device per message on its own topic; more sends a group
    # message of several devices on {topic_prefix}/{gateway.id}/telemetry (README "Group messages")
    devices: int = Field(default=1, ge=1)


def _server_entry(value: str) -> str:
    parse_server(value, 1883)  # the syntax; the default port is mqtt.port, applied by MqttSection.nodes
    return value


def _never_or_duration(value: object) -> float:
    """0 (also "0", "0s") means never; anything else is a duration."""
    if not isinstance(value, bool) and isinstance(value, int | float | str) and re.fullmatch(
            r"\s*0+(\.0*)?\s*(ms|s|m|h)?\s*", str(value)):
        return 0.0
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"{exc} (or 0: never)") from None


class FailoverSection(_Strict):
    """How the publisher moves between the nodes of ``mqtt.servers`` (see gateway.publish.servers)."""

    order: Literal["ordered", "random"] = "ordered"  # random: a stable order per gateway id
    # on a node other than the first this long: probe the first and move back if it answers (0: never)
    fail_back_after: Annotated[float, BeforeValidator(_never_or_duration)] = 600.0


class MqttSection(_Strict):
    host: str | None = Field(default=None, min_length=1)  # one broker; or servers (a cluster's nodes)
    port: int = Field(default=1883, ge=1, le=65535)  # host's port, and the default port of servers
    servers: list[Annotated[str, AfterValidator(_server_entry)]] | None = None
    failover: FailoverSection = FailoverSection()
    topic_prefix: TopicPrefix = "city"
    encoding: Literal["cbor", "json", "packed"] = "cbor"  # packed: columnar CBOR for metered links
    compress: bool = False  # deflate packed messages (zlib)
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None  # or: the password is the text of this file (read at each connect)
    client_id: str | None = None  # default: city-gateway-<gateway.id>
    keepalive: Duration = 30.0
    tls: TlsSection | None = None
    publish_timeout: Duration = 10.0  # a PUBACK later than this means the link is dead
    max_inflight: int = Field(default=20, ge=1, le=65535)  # messages awaiting PUBACK at once
    batch: BatchSection = BatchSection()
    max_rate: float | None = Field(default=None, gt=0)  # readings per second sent at most (a metered link)

    @field_validator("password_file")
    @classmethod
    def _password_file_readable(cls, path: Path | None) -> Path | None:
        if path is not None:
            try:
                read_secret_file(path)
            except OSError as exc:
                raise ValueError(f"cannot read the password file {path}: {exc.strerror or exc}") from None
        return path

    @field_validator("servers")
    @classmethod
    def _servers_or_host(cls, servers: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if servers is None:
            return None
        if info.data.get("host") is not None:
            raise ValueError("give host (and port) or servers, not both")
        if not servers:
            raise ValueError("give at least one server (host:port)")
        seen: dict[ServerAddress, int] = {}
        for i, entry in enumerate(servers):
            node = parse_server(entry, info.data.get("port", 1883))
            if node in seen:
                raise ValueError(f"{entry!r} is listed twice (entries {seen[node]} and {i})")
            seen[node] = i
        return servers

    @model_validator(mode="after")
    def _a_broker(self) -> MqttSection:
        if self.host is None and self.servers is None:
            raise ValueError("required key 'host' is missing (or servers: the nodes of a broker cluster)")
        return self

    @property
    def nodes(self) -> tuple[ServerAddress, ...]:
        """The broker nodes in the order written: ``servers``, or ``host``/``port`` as a list of one."""
        if self.servers is None:
            assert self.host is not None
            return (ServerAddress(self.host, self.port),)
        return tuple(parse_server(entry, self.port) for entry in self.servers)

    @model_validator(mode="after")
    def _compress_needs_packed(self) -> MqttSection:
        if self.compress and self.encoding != "packed":
            raise ValueError("compress: true needs encoding: packed")
        return self

    @model_validator(mode="after")
    def _one_password(self) -> MqttSection:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        return self

    def secret_password(self) -> str | None:
        """The password to log in with: ``password``, or the text of ``password_file`` read now."""
        if self.password_file is not None:
            try:
                return read_secret_file(self.password_file)
            except (OSError, ValueError) as exc:
                raise OSError(f"cannot read mqtt.password_file {self.password_file}: {exc}") from None
        return self.password.get_secret_value() if self.password is not None else None


class BufferSection(_Strict):
    max_mb: float = Field(default=256, gt=0)
    commit_interval: Duration = 1.0


class CommandsSection(_Strict):
    """Remote commands from the platform (see gateway/publish/commands.py): off unless enabled."""

    enabled: bool = False
    # recent command ids kept per device to refuse repeats; at most 10,000 (memory a Pi can spare per device)
    remember_ids: int = Field(default=1000, ge=1, le=10_000)


class FleetSection(_Strict):
    """Fleet configuration over MQTT (see gateway/fleet/): signed pushes, tried and rolled back. Off unless enabled."""

    enabled: bool = False
    # the platform's Ed25519 public keys (PEM); a push must be signed by one of them
    trust: list[Path] = Field(default_factory=lambda: [Path("/etc/gateway/fleet.pub")])
    trial: Duration = 120.0  # how long a pushed config has to prove itself (at least 5 s)

    @field_validator("trial")
    @classmethod
    def _trial_long_enough(cls, value: float) -> float:
        if value < 5.0:
            raise ValueError("trial must be at least 5s")
        return value

    @model_validator(mode="after")
    def _keys_readable(self) -> FleetSection:
        if self.enabled:
            if not self.trust:
                raise ValueError("fleet.enabled needs at least one public key in trust")
            for path in self.trust:
                if not os.access(path, os.R_OK):
                    why = "" if path.exists() else ": no such file"
                    raise ValueError(f"cannot read the trusted key {path}{why}")
        return self


class WebTlsSection(_Strict):
    """The page's own certificate (HTTPS); both files are required."""

    cert_file: Path
    key_file: Path

    @model_validator(mode="after")
    def _files_readable(self) -> WebTlsSection:
        for name in ("cert_file", "key_file"):
            path = getattr(self, name)
            if not os.access(path, os.R_OK):
                raise ValueError(f"cannot read {name} {path}" + ("" if path.exists() else ": no such file"))
        return self


def listen_address(text: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` or ``"[::1]:8080"`` -> (host, port); ValueError when it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not an address:port (e.g. 127.0.0.1:8080 or [::1]:8080)")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address (listen takes addresses, not names)") from None
    return host, int(port)


def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


class WebSection(_Strict):
    """The technician's local page (gateway.web): off unless enabled; always behind a password."""

    enabled: bool = False
    listen: list[str] = Field(default_factory=lambda: ["127.0.0.1:8080"], min_length=1)
    # a salted scrypt hash made by `gateway web passwd --file PATH`; required when enabled
    password_file: Path | None = Field(default=None, validate_default=True)
    host_names: list[str] = Field(default_factory=list)  # further names the page answers to (Host)
    tls: WebTlsSection | None = None
    writes: bool = False  # logged-in users may write writable points (the commands' allow-list)

    @field_validator("listen")
    @classmethod
    def _addresses(cls, listen: list[str]) -> list[str]:
        for text in listen:
            listen_address(text)
        return listen

    @field_validator("password_file")
    @classmethod
    def _password_file(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if not info.data.get("enabled"):
            return path
        if path is None:
            raise ValueError("web.password_file is required when the page is enabled (no default password):"
                             " make one with `gateway web passwd --file PATH`")
        if not os.access(path, os.R_OK):
            raise ValueError(f"cannot read {path}" + ("" if path.exists() else ": no such file")
                             + " (make it with `gateway web passwd --file PATH`)")
        return path

    @model_validator(mode="after")
    def _safe(self) -> WebSection:
        if self.enabled and self.writes and self.tls is None and self.open_addresses():
            raise ValueError(f"writes: true needs tls on a non-loopback address ({', '.join(self.open_addresses())}):"
                             " a password and the writes would cross the network in clear")
        return self

    def open_addresses(self) -> list[str]:
        """The listen addresses other machines can reach (not loopback)."""
        return [text for text in self.listen if not is_loopback(listen_address(text)[0])]


class DeviceSection(_Strict):
    """The keys of a device entry the core owns; the rest is validated by the driver's Config."""

    name: Name
    driver: Name
    interval: Duration = 1.0
    enabled: bool = True
    # Report by exception: a number for every point, or per point {name: band}; a value is sent
    # when it moved at least this much since it was last sent ...
    deadband: Annotated[float, Field(ge=0)] | dict[Name, Annotated[float, Field(ge=0)]] | None = None
    heartbeat: Duration | None = None  # ... or when this long has passed since (default: never)


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One validated device entry: the common keys plus the driver's own validated config."""

    name: str
    driver: str
    interval: float
    enabled: bool
    options: Any  # an instance of the driver's Config model
    deadband: float | dict[str, float] | None = None
    heartbeat: float | None = None

    @property
    def reports_by_exception(self) -> bool:
        return self.deadband is not None or self.heartbeat is not None


class RootSection(_Strict):
    """The top level; ``devices`` is checked entry by entry against each driver's model."""

    gateway: GatewaySection
    mqtt: MqttSection
    buffer: BufferSection = BufferSection()
    commands: CommandsSection = CommandsSection()
    fleet: FleetSection = FleetSection()
    web: WebSection = WebSection()
    devices: list[dict[str, Any]] = Field(default_factory=list)
    # Further files holding more `devices:` (e.g. conf.d/*.yaml, one per cabinet or bus), relative
    # to this file's folder. Checked and merged by the loader.
    include: list[str] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Config:
    """A loaded, validated config."""

    path: Path
    gateway: GatewaySection
    mqtt: MqttSection
    buffer: BufferSection
    devices: tuple[DeviceSpec, ...]
    hash: str  # sha256 of the validated content, short; reported in the status
    # The config as written (${ENV} unresolved), kept as the last good one once it ran well.
    source: str = field(default="", compare=False, repr=False)
    # Set when this is the last good config, run because the config file was invalid: the reason.
    fallback: str | None = None
    commands: CommandsSection = field(default_factory=CommandsSection)
    fleet: FleetSection = field(default_factory=FleetSection)
    web: WebSection = field(default_factory=WebSection)
