"""Stand-ins for the text domain's downloads, built in tmp_path: nothing is fetched.

`pinned(monkeypatch, module, attr, path)` puts a file where the loader looks
(<cache>/downloads/<pinned filename>) and pins its sha256, so the loader accepts it.
"""
import dataclasses
import shutil

import pytest

from lorakit.domains.downloads import sha256


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


@pytest.fixture
def pinned(monkeypatch, cache):
    """Place `path` (or bytes) as module.attr's download in `cache` and pin its sha256."""
    def place(module, attr, content, sha: str | None = None):
        pin = getattr(module, attr)
        dest = cache / "downloads" / pin.filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            dest.write_bytes(content)
        else:
            shutil.copyfile(content, dest)
        monkeypatch.setattr(module, attr, dataclasses.replace(pin, sha256=sha or sha256(dest)))
        return dest
    return place
