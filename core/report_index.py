"""The index page of a `lorakit demo --all` report folder (Markdown and HTML)."""
from __future__ import annotations

import html
from pathlib import Path

from .atomic import atomic_write


def write_index(out: Path, entries: list[dict]) -> Path:
    md = ["# lorakit demo report\n"]
    parts = ["<html><head><meta charset='utf-8'><title>lorakit demo report</title></head>"
             "<body><h1>lorakit demo report</h1>"]
    for e in entries:
        md.append(f"## {e['name']}\n\nstatus: {e['status']}" +
                  (f" — [report]({e['report']})" if e.get("report") else "") + "\n")
        parts.append(f"<h2>{html.escape(e['name'])}</h2><p>status: {html.escape(e['status'])}"
                     + (f" — <a href='{e['report']}'>report</a>" if e.get("report") else "")
                     + "</p>")
        figures = e.get("figures") or {}
        if figures:
            md.append("| figure | value |\n|---|---|")
            md += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                   for k, v in figures.items()]
            md.append("")
            parts.append("<table border='1'>" + "".join(
                f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                for k, v in figures.items()) + "</table>")
        report_dir = out / Path(e.get("report", "")).parent if e.get("report") else None
        if report_dir and report_dir.is_dir():
            for png in sorted(report_dir.glob("*.png")):
                rel = png.relative_to(out)
                parts.append(f"<p><img src='{rel}' style='max-width:640px'></p>")
    parts.append("</body></html>")
    atomic_write(out / "index.md", lambda tmp: Path(tmp).write_text("\n".join(md) + "\n"))
    atomic_write(out / "index.html", lambda tmp: Path(tmp).write_text("".join(parts)))
    return out / "index.html"
