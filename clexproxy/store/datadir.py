"""The data dir: created when missing, refused in one line that names the path and the fix.

The SQLite store, its WAL journal, the demo key and the workers' metrics snapshots all live
there, so the directory itself must be writable, not only the database file. `clexproxy serve`
checks it before anything starts; `SQLiteStore` checks it again when it opens.
"""

from __future__ import annotations

import os
from pathlib import Path

from clexproxy.store.base import DataDirUnusable

DATA_DIR_FIX = "or choose another with --data-dir (CLEX_DATA_DIR)"


def usable_data_dir(data_dir: str | Path) -> Path:
    """The data dir, created when missing; `DataDirUnusable` (path and fix named) when it cannot hold the store."""
    path = Path(data_dir)
    if path.exists() and not path.is_dir():
        raise DataDirUnusable(f"data dir {path} is not a directory: move that file away {DATA_DIR_FIX}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirUnusable(
            f"cannot create data dir {path} ({exc.strerror}): create it writable for this user {DATA_DIR_FIX}"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise DataDirUnusable(
            f"data dir {path} is not writable: make it writable for this user (uid {os.getuid()}) {DATA_DIR_FIX}"
        )
    return path
