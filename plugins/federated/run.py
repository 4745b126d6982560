"""`lorakit federated run` and `lorakit federated demo`: each strategy on Flower's
simulation engine (Ray backend), then results.json, report.md and accuracy.png."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .aggregation import STRATEGIES
from .app import DEFAULTS, simulate


def measure(strategies=STRATEGIES, **overrides) -> tuple[dict, dict]:
    """Each strategy once on the simulation engine: (per-strategy history and wall time,
    flat figures: final accuracy, bytes per client per round, mean aggregation error)."""
    results = {}
    for name in strategies:
        start = time.perf_counter()
        history = simulate({**overrides, "strategy": name})
        results[name] = {"history": history, "wall_s": time.perf_counter() - start}
        print(f"federated {name}: " + ", ".join(
            f"round {r['round']} acc {r.get('accuracy', float('nan')):.3f}" for r in history),
            flush=True)
    figures = {}
    for name, res in results.items():
        last = res["history"][-1]
        figures[f"{name}.final_accuracy"] = last.get("accuracy")
        figures[f"{name}.bytes_per_client"] = last.get("bytes_per_client")
        figures[f"{name}.mean_aggregation_error"] = (
            sum(r["error"] for r in res["history"][1:]) / max(1, len(res["history"]) - 1))
        figures[f"{name}.wall_s"] = res["wall_s"]
    return results, figures


def run_all(out_dir: Path, strategies=STRATEGIES, **overrides) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, figures = measure(strategies, **overrides)
    settings = {k: v for k, v in {**DEFAULTS, **overrides}.items() if k != "strategy"}
    summary = {"settings": settings, "figures": figures, "runs": results}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    plot_accuracy(results, out / "accuracy.png")
    lines = ["# Federated LoRA (Flower simulation engine)", "",
             f"settings: `{json.dumps(summary['settings'])}`", "",
             "| strategy | final accuracy | bytes/client/round | mean aggregation error | wall s |",
             "|---|---|---|---|---|"]
    for name in results:
        lines.append(f"| {name} | {figures[f'{name}.final_accuracy']:.3f} | "
                     f"{figures[f'{name}.bytes_per_client']} | "
                     f"{figures[f'{name}.mean_aggregation_error']:.3g} | "
                     f"{figures[f'{name}.wall_s']:.1f} |")
    lines += ["", "![accuracy per round](accuracy.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    return figures


def plot_accuracy(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, res in results.items():
        rows = [r for r in res["history"] if "accuracy" in r]
        ax.plot([r["round"] for r in rows], [r["accuracy"] for r in rows], marker="o", label=name)
    ax.set_xlabel("round")
    ax.set_ylabel("global test accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="lorakit federated run", description=__doc__)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--out", type=Path, default=Path("federated_run"))
    for key, value in DEFAULTS.items():
        if key != "strategy":
            ap.add_argument(f"--{key}", type=type(value), default=value)
    args = vars(ap.parse_args(argv))
    out, names = args.pop("out"), args.pop("strategies").split(",")
    run_all(out, names, **args)
    print(f"federated: wrote {out}/report.md")
    return 0


def demo(out_dir: Path = Path("federated_demo"), threads: int = 1) -> dict:
    """Four strategies, four clients (one domain each), three rounds on the tiny base."""
    return run_all(out_dir, STRATEGIES, clients=4, rounds=3)
