"""The index page of a `lorakit demo --all` report folder: what a newcomer opens first.

Per plugin: whether its demo ran, its headline table (rounded numbers with units, the
baseline measured beside them, the paper's claim or the issue's goal), its plots
inline and a link to its full report as HTML. Everything comes from the plugin's own
results.json (`lorakit.reports.demo`); a folder without one (a third-party demo that
writes only report.md) shows the figures its demo returned.

    out/index.md     the page as Markdown
    out/index.html   the same page for a browser
"""
from __future__ import annotations

import json
from pathlib import Path

from .bench import figure_rows, headline_rows, markdown_table, plots
from .html import write_markdown_and_html

INTRO = ("Each demo ran its plugin's embedded default end to end on this machine. The "
         "headline numbers come from the demo's results.json; the baseline beside each "
         "was measured in the same run, and the last column says what the paper claims "
         "or the issue asks for. Numbers are rounded to 3 significant digits; the "
         "reports and results.json hold them in full.\n")


def read_result(folder: Path) -> dict:
    path = folder / "results.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def links(out: Path, folder: str) -> str:
    found = [(label, f"{folder}/{name}") for label, name in
             (("report", "report.html"), ("Markdown", "report.md"),
              ("results.json", "results.json")) if (out / folder / name).is_file()]
    return " · ".join(f"[{label}]({path})" for label, path in found)


def entry_markdown(out: Path, e: dict) -> list[str]:
    md = [f"## {e['name']}\n"]
    folder = e.get("folder")
    line = f"status: {e['status']}"
    if folder and links(out, folder):
        line += " — " + links(out, folder)
    md.append(line + "\n")
    if not folder or not (out / folder).is_dir():
        return md
    result = read_result(out / folder)
    if result.get("title"):
        md.append(f"*{result['title']}*\n")
    if result.get("headline"):
        md.append(markdown_table(headline_rows(result)))
    elif result.get("figures") or e.get("figures"):
        shown = result if result.get("figures") else {"figures": e["figures"]}
        md.append(markdown_table(figure_rows(shown)))
    md += [f"![{png}]({folder}/{png})\n" for png in plots(out / folder, result)]
    return md


def write_index(out: Path, entries: list[dict]) -> Path:
    """index.md and index.html over `entries` ({"name", "status", "folder", "figures"});
    returns the HTML path."""
    out = Path(out)
    md = ["# lorakit demo report\n", INTRO,
          markdown_table([{"plugin": e["name"], "status": e["status"]} for e in entries])]
    for e in entries:
        md += entry_markdown(out, e)
    return write_markdown_and_html(out / "index.md", "lorakit demo report", "\n".join(md))
