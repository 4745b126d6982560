"""Jane Austen's six completed novels as paragraphs: real English prose for language models.

The texts (public domain; from Project Gutenberg) come as R data in Debian's
`r-cran-janeaustenr` 1.0.0-1 (the CRAN package janeaustenr by Julia Silge, MIT licence),
fetched with `apt-get download` into the cache, sha256 pinned, and read without R: the
package's lazy-load database is an index (`Rdata.rdx`, an RDS file) of offsets into
`Rdata.rdb`, where each novel is a zlib-compressed serialized character vector with one
line of the book per element; the PyPI package `rdata` parses both. Nothing is committed.

Paragraphs are the runs of non-empty lines, joined with spaces. The split is by novel,
so held-out text is a book the model has not seen a line of: test = Persuasion (the
last Austen finished), val = Northanger Abbey, train = the other four.
"""
from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

from lorakit.domains.archives import deb_data, tar_member
from lorakit.domains.downloads import Pinned, cache_root, fetch
from lorakit.errors import DataError

DEB = Pinned(
    filename="r-cran-janeaustenr_1.0.0-1_all.deb", apt="r-cran-janeaustenr=1.0.0-1",
    sha256="df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
    what="Jane Austen's novels",
    # by hand: the Debian package itself, on any machine with apt-get
    by_hand="apt-get download r-cran-janeaustenr=1.0.0-1 on a Debian machine")
DATA = "./usr/lib/R/site-library/janeaustenr/data/"
NOVELS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey",
          "persuasion")
SPLIT = {"val": ("northangerabbey",), "test": ("persuasion",)}


def _r_value(raw: bytes, where: str):
    """An R serialization (RDS) parsed and converted to Python by `rdata`."""
    import rdata

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # rdata warns about the missing file extension
            return rdata.conversion.convert(rdata.parser.parse_data(raw, extension=".rds"))
    except Exception as err:  # rdata raises many kinds on bad bytes; all mean the same here
        raise DataError(f"{where} is not readable R data ({type(err).__name__}: {err}); "
                        "delete the downloaded package and run again") from None


def read_lazyload(rdx: bytes, rdb: bytes, where: str) -> dict[str, list[str]]:
    """Each variable of an R lazy-load database (index `rdx`, data `rdb`) as a list of str."""
    index = _r_value(rdx, f"{where}Rdata.rdx")
    try:
        variables = {str(k): [int(x) for x in v] for k, v in index["variables"].items()}
    except (KeyError, TypeError, AttributeError, ValueError):
        raise DataError(f"{where}Rdata.rdx is not an R lazy-load index (no `variables` "
                        "offsets)") from None
    out = {}
    for name, (offset, length) in variables.items():
        chunk = rdb[offset:offset + length]
        try:
            # each entry: 4-byte big-endian length of the serialization, then its zlib stream
            (size,) = struct.unpack(">I", chunk[:4])
            raw = zlib.decompress(chunk[4:])
            if len(raw) != size:
                raise zlib.error(f"{len(raw)} bytes, the header says {size}")
        except (struct.error, zlib.error) as err:
            raise DataError(f"{where}Rdata.rdb: the entry of {name!r} (offset {offset}, "
                            f"{length} bytes) is not zlib data ({err})") from None
        value = _r_value(raw, f"{where}Rdata.rdb ({name})")
        out[name] = ["" if line is None else str(line) for line in list(value)]
    return out


def paragraphs(lines: list[str]) -> list[str]:
    """The runs of non-empty lines, each joined with single spaces."""
    out, current = [], []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            out.append(" ".join(current))
            current = []
    return out


def austen_novels(cache: Path | None = None) -> dict[str, list[str]]:
    """{novel: [paragraph]} for the six novels (names as in NOVELS), fetched on first use."""
    deb = fetch(DEB, cache_root(cache) / "downloads")
    data = deb_data(deb)
    where = f"{deb}: {DATA}"
    rdx = tar_member(data, DATA + "Rdata.rdx", where=f"{deb} (data.tar)")
    rdb = tar_member(data, DATA + "Rdata.rdb", where=f"{deb} (data.tar)")
    novels = read_lazyload(rdx, rdb, where)
    missing = [n for n in NOVELS if n not in novels]
    if missing:
        raise DataError(f"{where}Rdata.rdx has no novel {', '.join(missing)} (it holds "
                        f"{', '.join(sorted(novels))}); is this janeaustenr 1.0.0?")
    return {name: paragraphs(novels[name]) for name in NOVELS}


def austen(cache: Path | None = None) -> dict[str, list[str]]:
    """{"train"|"val"|"test": [paragraph]}, split by novel as SPLIT says."""
    novels = austen_novels(cache)
    held_out = {n for names in SPLIT.values() for n in names}
    out = {"train": [p for n in NOVELS if n not in held_out for p in novels[n]]}
    for split, names in SPLIT.items():
        out[split] = [p for n in names for p in novels[n]]
    return out
