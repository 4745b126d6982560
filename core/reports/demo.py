"""A demo's report: the benchmark suites' result shape, plus the headline a newcomer reads.

`lorakit <plugin> demo` ends with `write_demo_report`, which writes through the bench
writer (`lorakit.reports.bench.write_results`, atomic):

    out_dir/results.json   {"suite", "machine", "figures", "rows", "notes",
                            "title", "headline", "units", "tables", "plots"}
    out_dir/report.md      headline, rows, further tables, notes, figures, plots
    out_dir/report.html    the same page for a browser

The headline is the few numbers that answer "did it work?": each with its unit, the
baseline it is measured beside (the frozen base, the two-pass teacher, a classic
classifier) and the paper's claim or the issue's goal it answers. `lorakit demo
--all` puts every plugin's headline and plots on one index page (`report_index`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .bench import machine, write_results


@dataclass
class Headline:
    """One line of a demo's headline table.

    Args:
        measure: what was measured, in words ("child_test WER after S2-LoRA").
        value: the measured figure.
        unit: its unit ("s", "KB", "%"); "" for a ratio or a rate.
        baseline: the same figure for what it is compared with, measured in the same run.
        baseline_name: what the baseline is ("base model", "teacher, two passes").
        claim: the paper's claim or the issue's goal this figure answers, in words.
    """
    measure: str
    value: float
    unit: str = ""
    baseline: float | None = None
    baseline_name: str = ""
    claim: str = ""


def write_demo_report(out_dir: Path, name: str, title: str, headline: list[Headline],
                      figures: dict, rows: list[dict], notes: str = "",
                      units: dict[str, str] | None = None,
                      tables: dict[str, list[dict]] | None = None,
                      plots: list[str] | None = None) -> dict:
    """Write results.json, report.md and report.html of the demo `name`; returns the result.

    `plots` are PNG paths relative to out_dir (default: every PNG directly in it)."""
    result = {"suite": name, "machine": machine(), "title": title,
              "headline": [asdict(h) for h in headline], "figures": dict(figures),
              "rows": list(rows), "notes": notes, "units": dict(units or {}),
              "tables": dict(tables or {}), "plots": list(plots or [])}
    return write_results(Path(out_dir), result)
