"""Secrets at rest: reading a password file, and warning about files with secrets anyone can read.

The config may hold the broker password (better: ``${ENV}`` or ``mqtt.password_file``) and names
the TLS client key. None of them should be readable by every user of the board: the installer
makes them ``0640 root:gateway``; ``gateway run`` says so at start when one is not.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.config.settings import Config

log = logging.getLogger(__name__)


def read_secret_file(path: Path) -> str:
    """The secret held in ``path``: its text without the trailing newline.

    Raises OSError when the file cannot be read, ValueError when it is empty.
    """
    secret = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    if not secret:
        raise ValueError(f"{path} is empty")
    return secret


def readable_by_others(path: Path) -> bool:
    """True when ``path`` is a file every user of the machine may read (mode & 0o004)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and bool(st.st_mode & stat.S_IROTH)


def warn_exposed_secrets(config: Config) -> list[Path]:
    """Log one warning for each file of ``config`` with secrets that others can read; return them.

    Looks at the config file itself, ``mqtt.password_file`` and ``mqtt.tls.key_file``.
    """
    files: list[tuple[str, Path]] = [("config file", config.path)]
    if config.mqtt.password_file is not None:
        files.append(("mqtt.password_file", config.mqtt.password_file))
    if config.mqtt.tls is not None and config.mqtt.tls.key_file is not None:
        files.append(("mqtt.tls.key_file", config.mqtt.tls.key_file))
    exposed = []
    for what, path in files:
        if readable_by_others(path):
            mode = stat.S_IMODE(os.stat(path).st_mode)
            log.warning("%s %s is readable by every user of this machine (mode %04o) and may hold secrets: "
                        "chmod 640 %s (owner root, group gateway)", what, path, mode, path)
            exposed.append(path)
    return exposed
