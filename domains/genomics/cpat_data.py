"""CPAT's published human test set: 4,000 mRNAs and 4,000 lncRNAs (Wang et al. 2013).

The files ship inside the CPAT 3.0.4 source distribution on PyPI, which is GPL-2, so
lorakit never commits them: `fetch_cpat_human()` runs

    pip download --no-deps --no-binary :all: CPAT==3.0.4

into the cache folder ($LORAKIT_CACHE/cpat, default ~/.cache/lorakit/cpat) once (its
sha256 pinned, see ../downloads.py),
extracts the two test files and reuses them afterwards.
"""
from __future__ import annotations

import tarfile
from pathlib import Path

from lorakit.domains import downloads
from lorakit.errors import DataError

from .fasta import Record, read_fasta

VERSION = "3.0.4"
SDIST = downloads.Pinned(
    filename=f"CPAT-{VERSION}.tar.gz", pip=f"CPAT=={VERSION}", sdist=True,
    sha256="6d832f20729f8fc814384a27a4fcebcf81b11c0e6d80a404b4c4860d17e7d935",
    what="CPAT's human test set")
FILES = {"coding": "Human_test_coding_mRNA.fa", "noncoding": "Human_test_noncoding_RNA.fa.gz"}


def cache_dir() -> Path:
    return downloads.cache_dir() / "cpat"


def fetch_cpat_human(cache: Path | None = None) -> dict[str, Path]:
    """Paths of the two CPAT human test FASTA files, downloading them on first use."""
    cache = Path(cache) if cache else cache_dir()
    paths = {name: cache / fname for name, fname in FILES.items()}
    if all(p.is_file() and p.stat().st_size > 0 for p in paths.values()):
        return paths
    sdist = downloads.fetch(SDIST, cache)
    try:
        with tarfile.open(sdist) as tar:
            for name, fname in FILES.items():
                member = tar.getmember(f"CPAT-{VERSION}/test/{fname}")
                data = tar.extractfile(member).read()
                tmp = paths[name].with_suffix(".part")
                tmp.write_bytes(data)
                tmp.replace(paths[name])
    except (tarfile.TarError, KeyError, OSError) as err:
        raise DataError(f"{sdist} is not the CPAT {VERSION} sdist or is damaged ({err}); "
                        "delete it and run again") from None
    return paths


def load_cpat_human(cache: Path | None = None) -> tuple[list[Record], list[int]]:
    """(records, labels) with label 1 = coding mRNA, 0 = lncRNA, mRNAs first."""
    paths = fetch_cpat_human(cache)
    coding = read_fasta(paths["coding"])
    noncoding = read_fasta(paths["noncoding"])
    return coding + noncoding, [1] * len(coding) + [0] * len(noncoding)
