"""`atomic_write`: a file appears whole or not at all.

The bytes go to a temporary file in the target's folder, are flushed to disk and
renamed onto the target, so a crash never leaves a half-written adapter, report or
table behind. The file gets the mode an ordinary `open(path, "w")` would give under
the user's umask (mkstemp alone would leave it 0600, unreadable to the group).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write) -> Path:
    """Call `write(tmp_path)`, then rename tmp onto `path`; never leave a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
