import struct
import zlib

import numpy as np
import pytest
import rdata

from lorakit import DataError
from lorakit.domains.text import austen as au

from .standins import deb_bytes

NOVEL_LINES = {
    "sensesensibility": ["SENSE AND SENSIBILITY", "", "CHAPTER 1", "", "The family of",
                         "Dashwood had long", "been settled.", "", ""],
    "prideprejudice": ["It is a truth", "universally acknowledged.", "", "Mr. Bennet."],
    "mansfieldpark": ["About thirty years ago"],
    "emma": ["Emma Woodhouse,", "handsome, clever, and rich"],
    "northangerabbey": ["No one who had ever seen", "Catherine Morland", "", "Her father"],
    "persuasion": ["Sir Walter Elliot,", "of Kellynch Hall"],
}


def rds_bytes(tmp_path, value, compression=None) -> bytes:
    path = tmp_path / "value.rds"
    rdata.write_rds(path, value, compression=compression)
    return path.read_bytes()


def lazyload(tmp_path, novels: dict[str, list[str]]) -> tuple[bytes, bytes]:
    """(Rdata.rdx, Rdata.rdb) as R's makeLazyLoadDB writes them (zlib entries)."""
    rdb, offsets = b"", {}
    for name, lines in novels.items():
        raw = rds_bytes(tmp_path, np.array(lines))
        entry = struct.pack(">I", len(raw)) + zlib.compress(raw)
        offsets[name] = np.array([len(rdb), len(entry)], dtype=np.int32)
        rdb += entry
    index = {"variables": offsets, "references": {}, "compressed": np.array([True])}
    return rds_bytes(tmp_path, index, compression="gzip"), rdb


def austen_deb(tmp_path, novels=NOVEL_LINES) -> bytes:
    rdx, rdb = lazyload(tmp_path, novels)
    return deb_bytes({au.DATA + "Rdata.rdx": rdx, au.DATA + "Rdata.rdb": rdb})


def test_paragraphs_are_runs_of_non_empty_lines_joined_by_spaces():
    assert au.paragraphs(NOVEL_LINES["sensesensibility"]) == [
        "SENSE AND SENSIBILITY", "CHAPTER 1", "The family of Dashwood had long been settled."]
    assert au.paragraphs(["", "  ", ""]) == []


def test_read_lazyload_reads_each_variable_of_an_rdx_rdb_pair(tmp_path):
    rdx, rdb = lazyload(tmp_path, {"emma": ["a", "", "b c"], "persuasion": ["d"]})
    assert au.read_lazyload(rdx, rdb, "pkg/") == {"emma": ["a", "", "b c"],
                                                  "persuasion": ["d"]}


def test_austen_splits_by_novel_persuasion_held_out(pinned, cache, tmp_path):
    pinned(au, "DEB", austen_deb(tmp_path))
    novels = au.austen_novels(cache)
    assert list(novels) == list(au.NOVELS)
    assert novels["prideprejudice"] == ["It is a truth universally acknowledged.", "Mr. Bennet."]
    split = au.austen(cache)
    assert split["test"] == ["Sir Walter Elliot, of Kellynch Hall"]
    assert split["val"] == ["No one who had ever seen Catherine Morland", "Her father"]
    assert len(split["train"]) == 3 + 2 + 1 + 1


def test_austen_names_a_missing_novel(pinned, cache, tmp_path):
    pinned(au, "DEB", austen_deb(tmp_path, {"emma": ["x"]}))
    with pytest.raises(DataError, match=r"Rdata.rdx has no novel sensesensibility, .*persuasion "
                       r"\(it holds emma\)"):
        au.austen(cache)


def test_austen_names_an_rdb_entry_that_is_not_zlib(pinned, cache, tmp_path):
    rdx, rdb = lazyload(tmp_path, NOVEL_LINES)
    broken = rdb[:4] + b"\x00" * 16 + rdb[20:]
    pinned(au, "DEB", deb_bytes({au.DATA + "Rdata.rdx": rdx, au.DATA + "Rdata.rdb": broken}))
    with pytest.raises(DataError, match=r"Rdata.rdb: the entry of 'sensesensibility' "
                       r"\(offset 0, \d+ bytes\) is not zlib data"):
        au.austen(cache)


def test_austen_names_an_index_that_is_not_r_data(pinned, cache):
    pinned(au, "DEB", deb_bytes({au.DATA + "Rdata.rdx": b"not R at all",
                                 au.DATA + "Rdata.rdb": b""}))
    with pytest.raises(DataError, match=r"janeaustenr/data/Rdata.rdx is not readable R data"):
        au.austen(cache)


def test_austen_reports_a_failed_download(monkeypatch, cache):
    import subprocess

    from lorakit.domains import downloads

    def apt_fails(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package")
    monkeypatch.setattr(downloads.subprocess, "run", apt_fails)
    monkeypatch.setattr(downloads.shutil, "which", lambda name: "/usr/bin/apt-get")
    with pytest.raises(DataError, match=r"could not download r-cran-janeaustenr=1.0.0-1 "
                       r"\(Jane Austen's novels\): apt-get download .*Unable to locate package.*"
                       r"put r-cran-janeaustenr_1.0.0-1_all.deb \(get it with: apt-get download "
                       r"r-cran-janeaustenr=1.0.0-1 on a Debian machine\) into "):
        au.austen(cache)
