"""Reports as HTML pages: what a browser shows as a document, not as plain text.

A report is written once, as Markdown (`lorakit.reports.bench.write_report`, the demo index);
the HTML page beside it is that same text rendered by markdown-it (CommonMark plus
tables; installed with rich, which lorakit already needs), so the two never say
different things. Tables become HTML tables and `![plot](plot.png)` an inline image.
"""
from __future__ import annotations

import html
from pathlib import Path

from ..atomic import atomic_write

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; line-height: 1.45; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; }
td { font-variant-numeric: tabular-nums; }
img { max-width: min(100%, 760px); border: 1px solid #eee; margin: 0.3em 0; }
code { background: #f5f5f5; padding: 0 0.2em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
"""


def markdown_to_html(markdown: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)


def html_page(title: str, markdown: str) -> str:
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            f"{markdown_to_html(markdown)}</body></html>\n")


def write_markdown_and_html(md_path: Path, title: str, markdown: str) -> Path:
    """`md_path` and the same report as HTML beside it (`.html`); returns the HTML path."""
    md_path = Path(md_path)
    atomic_write(md_path, lambda tmp: Path(tmp).write_text(markdown))
    html_path = md_path.with_suffix(".html")
    atomic_write(html_path, lambda tmp: Path(tmp).write_text(html_page(title, markdown)))
    return html_path
