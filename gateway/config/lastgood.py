"""The last config that ran well, kept in the data directory.

A bad edit followed by a power cut must not leave a gateway dead at the roadside: when the config
file is invalid at start, the daemon runs the last config that ran well, and says so loudly.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import yaml

from gateway.atomic import write_atomic

log = logging.getLogger(__name__)

FILE_NAME = "last-good.yaml"
DEFAULT_DATA_DIR = Path("/var/lib/gateway")


def save(data_dir: Path, source: str) -> bool:
    """Write ``source`` (the config as written, ``${ENV}`` references unresolved) atomically.

    Skips the write when the same content is there already (no needless flash wear). Returns True
    when it wrote.
    """
    path = data_dir / FILE_NAME
    text = "# The last config that ran well; used when the config file is invalid at start.\n"
    text += source
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (FileNotFoundError, OSError):
        pass
    write_atomic(path, text.encode("utf-8"), mode=0o600)  # it may hold a password written inline
    return True


def candidates(config_path: str | Path) -> list[Path]:
    """Where a last-good config may be, best guess first.

    The data directory named by the (invalid) file itself, if it can be read at all; systemd's
    $STATE_DIRECTORY; the default /var/lib/gateway.
    """
    found: list[Path] = []
    data_dir = data_dir_of(config_path)
    if data_dir is not None:
        found.append(data_dir)
    for state in os.environ.get("STATE_DIRECTORY", "").split(":"):
        if state:
            found.append(Path(state))
    found.append(DEFAULT_DATA_DIR)
    unique: list[Path] = []
    for path in found:
        if path not in unique:
            unique.append(path)
    return [p / FILE_NAME for p in unique]


def find(config_path: str | Path) -> Path | None:
    """The last-good config for ``config_path``, or None."""
    for path in candidates(config_path):
        if path.is_file():
            return path
    return None


def data_dir_of(config_path: str | Path) -> Path | None:
    """The data_dir a broken config file names, if it can be made out at all."""
    try:
        with open(config_path, errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    try:
        value = yaml.safe_load(text)["gateway"]["data_dir"]
    except Exception:  # the file is broken (that is why we are here): look for the line itself
        match = _DATA_DIR_LINE.search(text)
        value = match.group(1).strip("'\"") if match else None
    if isinstance(value, str) and value and "${" not in value:
        return Path(value)
    return None


_DATA_DIR_LINE = re.compile(r"(?:^|[\s{,])data_dir:\s*([^\s#,}]+)", re.MULTILINE)
