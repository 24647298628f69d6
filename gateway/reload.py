"""Live reload: what changed between two configs, so only the changed devices restart."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.settings import Config, DeviceSpec

RESTART_SECTIONS = ("gateway", "buffer")  # take effect only at the next start


@dataclass(slots=True)
class ConfigDiff:
    """Devices to stop, to start, and whether the broker session must be renewed."""

    removed: list[str] = field(default_factory=list)
    added: list[DeviceSpec] = field(default_factory=list)
    changed: list[DeviceSpec] = field(default_factory=list)
    mqtt_changed: bool = False
    restart_pending: list[str] = field(default_factory=list)  # sections that need a restart

    @property
    def empty(self) -> bool:
        return not (self.removed or self.added or self.changed or self.mqtt_changed or self.restart_pending)

    def summary(self) -> str:
        parts = [f"{len(self.added)} devices added", f"{len(self.changed)} changed", f"{len(self.removed)} removed"]
        if self.mqtt_changed:
            parts.append("broker settings changed")
        return ", ".join(parts)


def same_device(a: DeviceSpec, b: DeviceSpec) -> bool:
    """True when a running device needs no restart: same driver, timing and validated options.

    Options are compared after validation, so an edited profile file counts as a change and a
    reformatted entry does not.
    """
    keys = ("driver", "interval", "enabled", "options", "deadband", "heartbeat")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def diff(old: Config, new: Config) -> ConfigDiff:
    """What applying ``new`` over the running ``old`` takes."""
    result = ConfigDiff()
    before = {d.name: d for d in old.devices}
    after = {d.name: d for d in new.devices}
    result.removed = [name for name in before if name not in after]
    for name, spec in after.items():
        if name not in before:
            result.added.append(spec)
        elif not same_device(before[name], spec):
            result.changed.append(spec)
    result.mqtt_changed = old.mqtt != new.mqtt
    result.restart_pending = [s for s in RESTART_SECTIONS if getattr(old, s) != getattr(new, s)]
    return result
