"""The benchmark runner: one shape of result for every suite.

A suite is a function `run(out_dir, threads=1, quick=False) -> dict` with keys
`figures` (a flat map of named numbers, ratios measured side by side in one run),
`rows` (the table, a list of flat dicts) and optionally `notes`. It may write PNG
plots into `out_dir`. The runner adds `suite` and `machine` and writes

    out_dir/results.json   {"suite", "machine", "figures", "rows", "notes"}
    out_dir/report.md      the table, the figures and the plots
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from .atomic import atomic_write
from .errors import LoraKitError
from .registry import bench_suites, resolve


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


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)\n"
    cols = list(dict.fromkeys(k for row in rows for k in row))

    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in cols) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, result: dict) -> None:
    md = [f"# Benchmark: {result['suite']}\n",
          "Machine: " + ", ".join(f"{k} {v}" for k, v in result["machine"].items()) + "\n",
          "## Figures\n", markdown_table([{"figure": k, "value": v}
                                          for k, v in result["figures"].items()]),
          "## Rows\n", markdown_table(result["rows"])]
    if result.get("notes"):
        md += ["## Notes\n", result["notes"].strip() + "\n"]
    pngs = sorted(p.name for p in out_dir.glob("*.png"))
    if pngs:
        md += ["## Plots\n"] + [f"![{p}]({p})\n" for p in pngs]
    atomic_write(out_dir / "report.md", lambda tmp: Path(tmp).write_text("\n".join(md)))


def run_suite(name: str, out_dir: Path, threads: int = 1, quick: bool = False) -> dict:
    import torch

    suites = bench_suites()
    if name not in suites:
        raise LoraKitError(f"no benchmark suite {name!r}; available: {', '.join(sorted(suites))}")
    torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = resolve(suites[name])(out_dir, threads=threads, quick=quick)
    result = {"suite": name, "machine": machine(), "figures": dict(raw.get("figures", {})),
              "rows": list(raw.get("rows", [])), "notes": raw.get("notes", "")}
    atomic_write(out_dir / "results.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2, default=float)))
    write_report(out_dir, result)
    return result
