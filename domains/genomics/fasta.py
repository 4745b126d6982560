"""FASTA reading through Biopython, with errors a person can act on.

Biopython's `SimpleFastaParser` does the parsing; this module adds what it leaves
out: gzip detection, U -> T, an explicit policy for IUPAC ambiguity codes, and one
`DataError` per bad input that names the file, the record id and the line.
"""
from __future__ import annotations

import gzip
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from Bio.SeqIO.FastaIO import SimpleFastaParser

from lorakit.errors import DataError

Ambiguous = Literal["reject", "N"]
NUCLEOTIDES = set("ACGTN")
# IUPAC ambiguity codes other than N (which is kept as is)
IUPAC_AMBIGUOUS = set("RYKMSWBDHV")


@dataclass(frozen=True)
class Record:
    id: str
    seq: str
    description: str = ""
    line: int = 0  # 1-based line of the '>' header in its file (0: not from a file)

    def __len__(self) -> int:
        return len(self.seq)


def _open_text(path: Path) -> io.TextIOBase:
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="strict")
    return open(path, encoding="utf-8", errors="strict")


def _bad_char_line(text_lines: list[str], header_line: int, pos: int) -> int:
    """Line number (1-based) of sequence position `pos` of the record whose header is at
    `header_line`."""
    seen = 0
    for offset, raw in enumerate(text_lines[header_line:], start=header_line + 1):
        if raw.startswith(">"):
            break
        stripped = "".join(raw.split())
        if seen + len(stripped) > pos:
            return offset
        seen += len(stripped)
    return header_line


def read_fasta(path, ambiguous: Ambiguous = "reject") -> list[Record]:
    """Every record of a FASTA file (plain or gzip, by content, not by name).

    Sequences are upper-cased, U becomes T. `ambiguous="N"` maps IUPAC ambiguity codes
    (R, Y, K, M, S, W, B, D, H, V) to N; "reject" (the default) raises on them. Raises
    `DataError` for a missing, empty or non-FASTA file, an empty sequence, a duplicate id
    or a character outside ACGTUN, naming the file, record id and line.
    """
    path = Path(path)
    if ambiguous not in ("reject", "N"):
        raise DataError(f"ambiguous must be 'reject' or 'N', got {ambiguous!r}")
    if not path.is_file():
        raise DataError(f"FASTA file {path} does not exist")
    try:
        with _open_text(path) as handle:
            text = handle.read()
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, OSError) as err:
        raise DataError(f"{path} is not a FASTA text file (plain or gzip): {err}") from None
    lines = text.splitlines()
    first = next((i for i, raw in enumerate(lines) if raw.strip()), None)
    if first is None:
        raise DataError(f"FASTA file {path} is empty: it holds no records")
    if not lines[first].startswith(">"):
        raise DataError(f"{path} is not FASTA: line {first + 1} should start a record with "
                        f"'>' but reads {lines[first][:40]!r}")
    header_lines = [i + 1 for i, raw in enumerate(lines) if raw.startswith(">")]
    records: list[Record] = []
    seen: dict[str, int] = {}
    try:
        parsed = list(SimpleFastaParser(io.StringIO(text)))
    except ValueError as err:  # Biopython's message for a malformed file
        raise DataError(f"{path} is not FASTA: {err}") from None
    for (title, raw_seq), line in zip(parsed, header_lines):
        rid = title.split(None, 1)[0] if title.strip() else ""
        where = f"{path}, record {rid!r} (line {line})"
        if not rid:
            raise DataError(f"{path}, line {line}: a header with no record id")
        if rid in seen:
            raise DataError(f"{where}: duplicate id, first seen on line {seen[rid]}")
        seen[rid] = line
        seq = "".join(raw_seq.split()).upper().replace("U", "T")
        if not seq:
            raise DataError(f"{where}: empty sequence")
        bad = set(seq) - NUCLEOTIDES
        if bad and ambiguous == "N" and bad & IUPAC_AMBIGUOUS:
            seq = seq.translate({ord(c): "N" for c in IUPAC_AMBIGUOUS})
            bad = set(seq) - NUCLEOTIDES
        if bad:
            pos = min(seq.index(c) for c in bad)
            char = seq[pos]
            bad_line = _bad_char_line(lines, line, pos)
            hint = (" (an IUPAC ambiguity code: pass ambiguous='N' to map these to N)"
                    if char in IUPAC_AMBIGUOUS else "")
            raise DataError(f"{path}, record {rid!r}, line {bad_line}: character "
                            f"{char!r} at position {pos + 1} is not one of ACGTUN{hint}")
        desc = title[len(rid):].strip()
        records.append(Record(rid, seq, desc, line))
    return records


def write_fasta(records: Iterable[Record], path, width: int = 60) -> Path:
    """Write records as FASTA (gzip when the name ends in .gz)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as f:
        for r in records:
            f.write(f">{r.id}{' ' + r.description if r.description else ''}\n")
            for i in range(0, len(r.seq), width):
                f.write(r.seq[i:i + width] + "\n")
    return path
