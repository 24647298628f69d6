"""The buffer database's schema version: what a gateway does with a file another version wrote.

A fleet tool may roll a gateway back one version after a failed upgrade, so an older gateway meets
a file a newer one wrote. Two numbers in the file say what it may do with it:

- ``PRAGMA user_version``: the schema version of the file's layout (tables, columns, meta keys), the
  SCHEMA_VERSION of the gateway that created or last migrated it. 0.1.0 did not set it (0); its
  layout is version 1.
- meta ``format``: the oldest schema version that can still read and write the file. A newer
  gateway whose change older ones can live with (an added table or meta key they ignore) keeps it;
  one whose change they cannot raises it to its own SCHEMA_VERSION. 0.1.0 opens a file only if its
  format is 1 (and stops otherwise, see the README "What can be lost, and when").

On open, before anything is written (:func:`check`): a file of this version or older is used and
migrated up (:func:`migrate`); a newer one whose format this gateway meets is used as it is, its
user_version kept; a newer one it cannot use raises :class:`NewerSchema`, and the store sets the file
aside whole (renamed, never deleted) for the gateway that wrote it, starts a fresh one, and
continues each device's seq above the marks in seq.json, which every version keeps readable.

To change the layout: raise SCHEMA_VERSION, append the step from the previous version to MIGRATIONS,
and raise FORMAT to SCHEMA_VERSION (and meta ``format`` in the step) only if older gateways cannot
use the new layout. Keep the meta table and its ``format`` row whatever else changes: 0.1.0 knows no
user_version and reads only them (it stops on a format other than 1, and recreates a missing meta
table empty, which would renumber rows).
"""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 1
FORMAT = 1  # written to meta 'format' when a file is created
# MIGRATIONS[v]: the statements taking a file from schema version v to v + 1 (run in one transaction).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (),  # 0 -> 1: 0.1.0's layout is version 1; only the version stamp is new
)


class NewerSchema(Exception):
    """The file was written by a newer gateway, in a layout this one cannot use."""

    def __init__(self, version: int, fmt: int) -> None:
        super().__init__(f"schema version {version}, readable from version {fmt} on;"
                         f" this gateway has version {SCHEMA_VERSION}")
        self.version, self.format = version, fmt


def check(conn: sqlite3.Connection) -> int:
    """The file's schema version, after checking that this gateway can use it; reads only.

    Raises NewerSchema for a newer layout whose meta ``format`` is above SCHEMA_VERSION (or that
    has none this gateway can read).
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
    except sqlite3.OperationalError as exc:  # no meta table: a new file, or a layout unknown here
        if "no such table" not in str(exc):
            raise
        row = None
    fmt = row[0] if row is not None else (version if version > SCHEMA_VERSION else FORMAT)
    if not isinstance(fmt, int) or fmt > SCHEMA_VERSION:
        raise NewerSchema(version, fmt if isinstance(fmt, int) else version)
    return version


def migrate(conn: sqlite3.Connection, version: int) -> None:
    """Bring a file of schema ``version`` (from :func:`check`) up to SCHEMA_VERSION: one transaction.
    A newer file's version is kept (it is used as it is)."""
    if version >= SCHEMA_VERSION:
        return
    with conn:  # autocommit connection: BEGIN ... COMMIT, or ROLLBACK on an error
        conn.execute("BEGIN IMMEDIATE")
        for step in MIGRATIONS[version:SCHEMA_VERSION]:
            for statement in step:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
