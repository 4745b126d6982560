"""The benchmark runner: one shape of result for every suite (and every demo).

A suite is a function `run(out_dir, threads=1, quick=False) -> dict` with keys
`figures` (a flat map of named numbers, ratios measured side by side in one run),
`rows` (the table, a list of flat dicts) and optionally `notes`. It may write PNG
plots into `out_dir`. The runner adds `suite` and `machine` and writes

    out_dir/results.json   {"suite", "machine", "figures", "rows", "notes"}
    out_dir/report.md      the table, the figures and the plots
    out_dir/report.html    the same report for a browser

A demo (`lorakit.reports.demo`) writes the same shape through `write_results`, with a
few optional keys the report shows when present: `title`, `headline` (the numbers
that come first, each with its unit and the claim or goal it answers), `units`
(figure -> unit), `tables` (heading -> rows) and `plots` (PNG paths under out_dir).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
from pathlib import Path

from ..atomic import atomic_write
from ..errors import LoraKitError
from ..quiet import quiet_third_party
from ..registry import bench_suites, resolve
from .html import write_markdown_and_html


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}


def fmt_number(v) -> str:
    """A number as a person reads it: 3 significant digits, thousands separated."""
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        rounded = f"{v:.3g}"
        if math.isfinite(v) and 1e3 <= abs(float(rounded)) < 1e12:
            return f"{float(rounded):,.0f}"
        return rounded
    return str(v)


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)\n"
    cols = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt_number(row.get(c)).replace("|", "\\|") for c in cols)
              + " |" for row in rows]
    return "\n".join(lines) + "\n"


def headline_rows(result: dict) -> list[dict]:
    """The headline as table rows: measure, measured, baseline, claim / goal."""
    rows = []
    for h in result.get("headline", []):
        unit = f" {h['unit']}" if h.get("unit") else ""
        baseline = h.get("baseline")
        rows.append({
            "measure": h["measure"], "measured": fmt_number(h["value"]) + unit,
            "baseline": "" if baseline is None else
            fmt_number(baseline) + unit + (f" ({h['baseline_name']})"
                                           if h.get("baseline_name") else ""),
            "paper's claim / issue's goal": h.get("claim", "")})
    return rows


def figure_rows(result: dict) -> list[dict]:
    units = result.get("units") or {}
    if not units:
        return [{"figure": k, "value": v} for k, v in result["figures"].items()]
    return [{"figure": k, "value": v, "unit": units.get(k, "")}
            for k, v in result["figures"].items()]


def plots(out_dir: Path, result: dict) -> list[str]:
    """The result's own list of PNGs (paths under out_dir), else every PNG in out_dir."""
    return list(result.get("plots") or sorted(p.name for p in out_dir.glob("*.png")))


def write_report(out_dir: Path, result: dict) -> Path:
    """report.md and report.html from `result`; returns the HTML path."""
    out_dir = Path(out_dir)
    title = result.get("title") or f"Benchmark: {result['suite']}"
    md = [f"# {title}\n",
          "Machine: " + ", ".join(f"{k} {v}" for k, v in result["machine"].items()) + "\n"]
    if result.get("headline"):
        md += ["## Headline\n", markdown_table(headline_rows(result))]
    md += ["## Rows\n", markdown_table(result["rows"])]
    for heading, rows in (result.get("tables") or {}).items():
        md += [f"## {heading}\n", markdown_table(rows)]
    if result.get("notes"):
        md += ["## Notes\n", result["notes"].strip() + "\n"]
    md += ["## Figures\n", markdown_table(figure_rows(result))]
    pngs = plots(out_dir, result)
    if pngs:
        md += ["## Plots\n"] + [f"![{p}]({p})\n" for p in pngs]
    return write_markdown_and_html(out_dir / "report.md", title, "\n".join(md))


def write_results(out_dir: Path, result: dict) -> dict:
    """results.json, report.md and report.html of one suite or demo run."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "results.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2, default=float)))
    write_report(out_dir, result)
    return result


def cached(path: Path, compute, settings: dict | None = None):
    """The JSON a previous run of a suite left at `path`, else `compute()` written there
    (atomically): a suite stopped part-way resumes where it was, and runs split over
    several processes on one out folder add up. With `settings`, the file holds them
    beside the result and is read back only when they match (compared as stored: tuples
    are lists); else it is computed again."""
    path = Path(path)
    if settings is not None:
        settings = json.loads(json.dumps(settings))
    if path.is_file():
        done = json.loads(path.read_text())
        if settings is None:
            return done
        if done.get("settings") == settings:
            return done["result"]
        print(f"{path}: made with other settings, computing again", flush=True)
    result = compute()
    data = result if settings is None else {"settings": settings, "result": result}
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1)))
    return result


def suite_parser(doc: str, suite: str) -> argparse.ArgumentParser:
    """The command line of `python -m lorakit.benchmarks.<module>` (the same run as
    `lorakit bench --suite <suite>`): --out, --threads, --quick; a suite adds its own."""
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=f"reports/{suite}", help="folder for results and plots")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--quick", action="store_true", help="a smoke run of a few minutes")
    return p


def write_suite_run(suite: str, args: argparse.Namespace, call) -> dict:
    """Run `call()` (a suite's `run` with the parsed `args`) as `lorakit bench` does and
    print the figures."""
    result = _run_and_write(suite, Path(args.out), args.threads, call)
    print(json.dumps(result["figures"], indent=1))
    return result


def run_suite(name: str, out_dir: Path, threads: int = 1, quick: bool = False) -> dict:
    suites = bench_suites()
    if name not in suites:
        raise LoraKitError(f"no benchmark suite {name!r}; available: {', '.join(sorted(suites))}")
    out_dir = Path(out_dir)
    return _run_and_write(name, out_dir, threads, lambda: resolve(suites[name])(
        out_dir, threads=threads, quick=quick))


def _run_and_write(suite: str, out_dir: Path, threads: int, call) -> dict:
    """Torch threads and quiet third-party logs first, then `call()`, then results.json /
    report.md / report.html in `out_dir` (its figures, rows and notes)."""
    import torch

    torch.set_num_threads(threads)
    quiet_third_party()
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = call()
    result = {"suite": suite, "machine": machine(), "figures": dict(raw.get("figures", {})),
              "rows": list(raw.get("rows", [])), "notes": raw.get("notes", "")}
    return write_results(out_dir, result)
