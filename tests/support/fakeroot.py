"""A throwaway root for installer and package tests: the bits of /etc a Debian system has that the
installer and the maintainer scripts touch (users and groups)."""

from __future__ import annotations

from pathlib import Path


def fresh_root(root: Path) -> Path:
    """``root`` with an /etc holding root's and dialout's entries in passwd, group, shadow, gshadow."""
    etc = root / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\ndialout:x:20:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\ndialout:*::\n")
    for name in ("shadow", "gshadow"):
        (etc / name).chmod(0o640)
    return root
