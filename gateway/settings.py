"""The config models: the shape of gateway.yaml. Loading and error reporting live in config.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints

from gateway.fields import Duration, Name

TopicPrefix = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySection(_Strict):
    id: Name
    data_dir: Path = Path("/var/lib/gateway")


class TlsSection(_Strict):
    """TLS to the broker. The server certificate and host name are always verified."""

    ca_file: Path | None = None  # None: the system's CAs
    cert_file: Path | None = None  # client certificate (mTLS), with key_file
    key_file: Path | None = None


class MqttSection(_Strict):
    host: str = Field(min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    topic_prefix: TopicPrefix = "city"
    encoding: Literal["cbor", "json"] = "cbor"
    username: str | None = None
    password: SecretStr | None = None
    client_id: str | None = None  # default: city-gateway-<gateway.id>
    keepalive: Duration = 30.0
    tls: TlsSection | None = None
    publish_timeout: Duration = 10.0  # a PUBACK later than this means the link is dead
    max_inflight: int = Field(default=20, ge=1, le=65535)  # messages awaiting PUBACK at once
    max_batch_readings: int = Field(default=1000, ge=1)  # readings per telemetry message at most


class BufferSection(_Strict):
    max_mb: float = Field(default=256, gt=0)
    commit_interval: Duration = 1.0


class DeviceSection(_Strict):
    """The keys of a device entry the core owns; the rest is validated by the driver's Config."""

    name: Name
    driver: Name
    interval: Duration = 1.0
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One validated device entry: the common keys plus the driver's own validated config."""

    name: str
    driver: str
    interval: float
    enabled: bool
    options: Any  # an instance of the driver's Config model
    raw: dict[str, Any]  # the entry as written (after ${ENV} substitution), for change detection


class RootSection(_Strict):
    """The top level; ``devices`` is checked entry by entry against each driver's model."""

    gateway: GatewaySection
    mqtt: MqttSection
    buffer: BufferSection = BufferSection()
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
    # The merged document as written (includes inlined, ${ENV} unresolved): saved as the last good config.
    source: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # Set when this is the last good config, run because the config file was invalid: the reason.
    fallback: str | None = None
