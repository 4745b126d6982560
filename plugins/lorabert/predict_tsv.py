"""The prediction table, in the spirit of CPC2's output.

    #ID  transcript_length  ORF_length  coding_probability  label  windows  coverage

One row per transcript in input order; `label` is "coding" or "noncoding" (CPC2's
words); `ORF_length` is the longest ATG...stop ORF in nucleotides, stop included;
`windows` and `coverage` report how a long transcript was read (number of windows along
it, each read in every reading frame of the tokenizer; fraction of its nucleotides the
model saw). The file is written to a temporary name and
renamed, so a crash never leaves half a table.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lorakit.atomic import atomic_write
from lorakit.errors import DataError

COLUMNS = ["#ID", "transcript_length", "ORF_length", "coding_probability", "label",
           "windows", "coverage"]


@dataclass
class PredictionRow:
    id: str
    length: int
    orf_length: int
    coding_probability: float
    coding: bool
    windows: int
    coverage: float

    def line(self) -> str:
        return "\t".join([self.id, str(self.length), str(self.orf_length),
                          f"{self.coding_probability:.6f}",
                          "coding" if self.coding else "noncoding", str(self.windows),
                          f"{self.coverage:.4f}"])


def write_predictions(rows: list[PredictionRow], path) -> Path:
    """Write the TSV atomically (temporary file in the same folder, then rename)."""
    text = "\t".join(COLUMNS) + "\n" + "".join(r.line() + "\n" for r in rows)
    path = Path(path)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def read_predictions(path) -> list[dict]:
    """Rows of a prediction TSV as dicts (header checked)."""
    lines = Path(path).read_text().splitlines()
    if not lines or lines[0].split("\t") != COLUMNS:
        raise DataError(f"{path} is not a lorabert prediction table (header {COLUMNS})")
    out = []
    for n, line in enumerate(lines[1:], start=2):
        f = line.split("\t")
        if len(f) != len(COLUMNS):
            raise DataError(f"{path}, line {n}: {len(f)} fields, expected {len(COLUMNS)}")
        out.append({"id": f[0], "length": int(f[1]), "orf_length": int(f[2]),
                    "coding_probability": float(f[3]), "label": f[4], "windows": int(f[5]),
                    "coverage": float(f[6])})
    return out
