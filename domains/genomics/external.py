"""External coding-potential tools, run as separate programs on the same test split.

CPC2 (Kang et al. 2017; PyPI `cpc2-standalone`, GPL-3) is used as an installed tool,
never imported or vendored. It is looked for, in order, at $LORAKIT_CPC2, as `cpc2` on
PATH, and in a tool environment of its own inside lorakit's (`<sys.prefix>/tools/cpc2`,
where `make install` puts `cpc2-standalone`, so its unpinned numpy stays out of
lorakit's). Its shipped human model was trained on other transcripts than CPAT's test set.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from lorakit.errors import LoraKitError

from .fasta import Record, write_fasta

TOOL_ENV = Path(sys.prefix) / "tools" / "cpc2"


def find_cpc2() -> str | None:
    """The `cpc2` command, or None when none is installed; $LORAKIT_CPC2 naming no file
    (missing, or a folder) is an error, not a quiet fall-back."""
    chosen = os.environ.get("LORAKIT_CPC2")
    if chosen and not Path(chosen).is_file():
        raise LoraKitError(f"LORAKIT_CPC2={chosen} is not a file: point it at the `cpc2` "
                           "command of cpc2-standalone, or unset it")
    exe = chosen or shutil.which("cpc2") or str(TOOL_ENV / "bin" / "cpc2")
    return exe if Path(exe).exists() else None


def run_cpc2(records: list[Record], exe: str | None = None) -> dict[str, float]:
    """CPC2's coding probability for each record id."""
    exe = exe or find_cpc2()
    if exe is None:
        raise LoraKitError("CPC2 not found: pip install cpc2-standalone (it provides the "
                           "`cpc2` command) or set LORAKIT_CPC2 to its path")
    with tempfile.TemporaryDirectory(prefix="lorakit_cpc2_") as tmp:
        fasta = write_fasta(records, Path(tmp) / "in.fa")
        out = Path(tmp) / "cpc2"
        result = subprocess.run([exe, "-i", str(fasta), "-o", str(out)],
                                capture_output=True, text=True, cwd=tmp)
        table = out.with_suffix(".txt")
        if result.returncode != 0 or not table.is_file():
            raise LoraKitError(f"CPC2 failed ({result.returncode}): "
                               f"{(result.stderr or result.stdout).strip()[-400:]}")
        lines = table.read_text().splitlines()
    head = lines[0].lstrip("#").split("\t")
    col = head.index("coding_probability")
    return {f[0]: float(f[col]) for f in (line.split("\t") for line in lines[1:] if line)}
