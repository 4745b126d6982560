"""The code blocks of README.md and docs/**/*.md, as the snippet tests run them.

A block is one fenced ```python or ```bash block. Python blocks always run. A bash
block runs when it is a lorakit command (a line calling `lorakit` or `python -m
lorakit...`); other bash blocks (make, pip, curl, vllm) are set-up the reader does by
hand and are not run. A block is skipped only when the line just before it (blank
lines aside) is a marker with its reason:

    <!-- snippet: skip (a plugin demo trains for a few minutes) -->

and `<!-- snippet: continue -->` runs a block after the blocks before it on the same
page (one script), for a page that builds its example step by step.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"<!--\s*snippet:\s*(skip|continue)\s*(?:\((.*)\))?\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")
LORAKIT_COMMAND = re.compile(r"^\s*(?:\S*/)?(?:lorakit\s|python3?\s+-m\s+lorakit[.\s])")


@dataclass
class Block:
    path: Path          # relative to the repository root
    line: int           # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None    # the marker's reason, when skipped
    continues: bool     # runs after the page's earlier blocks

    @property
    def name(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def runs(self) -> bool:
        """Whether the snippet test executes it (when not skipped)."""
        if self.lang == "python":
            return True
        return self.lang == "bash" and any(
            LORAKIT_COMMAND.match(line) for line in self.code.splitlines())


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks_of(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        prev = start - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        marker = MARKER.search(lines[prev]) if prev >= 0 else None
        skip = None
        if marker and marker.group(1) == "skip":
            skip = marker.group(2) or ""
        out.append(Block(path.relative_to(ROOT), start + 1, lang, "\n".join(lines[start + 1:j]) + "\n",
                         skip, bool(marker and marker.group(1) == "continue")))
        i = j + 1
    return out


def all_blocks() -> list[Block]:
    return [b for path in markdown_files() for b in blocks_of(path)]


def script_of(block: Block) -> str:
    """The code to run: the block, after its page's earlier blocks when it continues."""
    if not block.continues:
        return block.code
    page = [b for b in blocks_of(ROOT / block.path) if b.lang == block.lang]
    chain: list[Block] = []
    for b in page:
        if b.line > block.line:
            break
        chain = [*chain, b] if b.continues else [b]
    return "\n".join(b.code for b in chain)
