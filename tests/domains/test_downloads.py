import hashlib
import subprocess

import pytest

from lorakit import CheckpointError, DataError
from lorakit.domains import downloads
from lorakit.domains.downloads import Pinned, fetch

CONTENT = b"release bytes"
PIN = Pinned(filename="pkg-1.0.tar.gz", sha256=hashlib.sha256(CONTENT).hexdigest(),
             what="the test data", pip="pkg==1.0", sdist=True)


@pytest.fixture
def calls(monkeypatch):
    """Record the download commands; each 'downloads' CONTENT into its cwd/--dest."""
    seen = []

    def run(cmd, cwd=None, **kw):
        seen.append(cmd)
        (cwd / PIN.filename).write_bytes(CONTENT)
        return subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(downloads.subprocess, "run", run)
    return seen


def test_cache_dir_is_lorakit_cache_or_home(monkeypatch, tmp_path):
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path))
    assert downloads.cache_dir() == tmp_path
    monkeypatch.delenv("LORAKIT_CACHE")
    assert str(downloads.cache_dir()).endswith(".cache/lorakit")


def test_fetch_downloads_once_then_reuses_the_file(calls, tmp_path):
    path = fetch(PIN, tmp_path)
    assert path.read_bytes() == CONTENT and len(calls) == 1
    assert calls[0][1:4] == ["-m", "pip", "download"] and calls[0][-1] == "pkg==1.0"
    assert "--no-binary" in calls[0] and "--only-binary=:all:" not in calls[0]
    assert fetch(PIN, tmp_path) == path and len(calls) == 1


def test_fetch_asks_pip_for_a_wheel_unless_sdist(calls, tmp_path):
    fetch(Pinned(**{**PIN.__dict__, "sdist": False}), tmp_path)
    assert "--only-binary=:all:" in calls[0] and "--no-binary" not in calls[0]


def test_fetch_uses_apt_get_download_for_a_debian_package(calls, monkeypatch, tmp_path):
    monkeypatch.setattr(downloads.shutil, "which", lambda name: "/usr/bin/apt-get")
    fetch(Pinned(PIN.filename, PIN.sha256, "the test data", apt="pkg=1:1.0-1"), tmp_path)
    assert calls == [["apt-get", "download", "-q", "pkg=1:1.0-1"]]


def test_fetch_without_apt_get_says_where_to_get_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(downloads.shutil, "which", lambda name: None)
    pin = Pinned("pkg_1.0_all.deb", "0" * 64, "the test data", apt="pkg=1.0",
                 by_hand="apt-get download pkg=1.0")
    with pytest.raises(DataError, match=r"this machine has no apt-get: put pkg_1.0_all.deb "
                       r"\(get it with: apt-get download pkg=1.0\) into "):
        fetch(pin, tmp_path)


def test_fetch_reports_pips_reason_and_the_way_by_hand(monkeypatch, tmp_path):
    monkeypatch.setattr(downloads.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 1, "", "ERROR: Could not find a version that satisfies pkg==1.0"))
    with pytest.raises(CheckpointError, match=r"could not download pkg==1.0 \(the test data\): "
                       r".*Could not find a version.*or put pkg-1.0.tar.gz into"):
        fetch(PIN, tmp_path, error=CheckpointError)


def test_fetch_refuses_a_file_with_another_sha256(tmp_path):
    (tmp_path / PIN.filename).write_bytes(CONTENT + b"!")
    with pytest.raises(DataError, match=f"{tmp_path / PIN.filename} has sha256 [0-9a-f]{{64}}, "
                       f"the pinned one is {PIN.sha256}: the file is damaged"):
        fetch(PIN, tmp_path)
