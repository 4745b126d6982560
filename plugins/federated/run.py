"""`lorakit federated run` and `lorakit federated demo`: each strategy on one of Flower's
two engines, then results.json, report.md and accuracy.png.

- `--engine simulation`: Flower's simulation engine (Ray backend), one process;
- `--engine deployment`: real processes on loopback, one `flower-superlink` and one
  `flower-supernode` per client, started here and stopped when the runs end
  (deployment.py); the demo runs this one.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from .config import STRATEGIES, FederatedConfig, options, settings
from .errors import RunError

ENGINES = ("simulation", "deployment")


def simulate(overrides: dict) -> list[dict]:
    """Run on Flower's simulation engine (Ray backend), one CPU per virtual client."""
    from flwr.simulation import run_simulation

    from .client_app import make_client_app
    from .server_app import make_server_app
    cfg = settings(overrides)
    record: dict = {}
    server, client = make_server_app(dict(cfg), record), make_client_app(dict(cfg))
    run_simulation(server_app=server, client_app=client, num_supernodes=cfg.clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    if "error" in record or "history" not in record:
        raise RunError(record.get("error") or "federated: the simulation ended without the "
                       "ServerApp's record; its log above says why")
    return record["history"]


@contextmanager
def engine_runner(engine: str, clients: int, workdir: Path | None = None):
    """A function `run(overrides) -> history` on the chosen engine; under `deployment` one
    loopback federation of `clients` SuperNodes serves every run and is stopped on exit."""
    if engine == "simulation":
        yield simulate
        return
    if engine != "deployment":
        raise RunError(f"federated: unknown engine {engine!r}; choose one of {ENGINES}")
    from .deployment import Loopback
    with Loopback(clients, Path(workdir or tempfile.mkdtemp(prefix="lorakit-flwr-"))) as fed:
        yield lambda overrides: fed.run(settings(overrides), name=overrides["strategy"])


def measure(strategies=STRATEGIES, engine: str = "simulation", workdir: Path | None = None,
            **overrides) -> tuple[dict, dict]:
    """Each strategy once: (per-strategy history and wall time, flat figures: final
    accuracy, bytes per client per round (and Fed-SB's one-time init upload), mean
    aggregation error, ε when DP is on, and
    LoRA-FAIR's mean similarity of the aggregate to the ideal update before and after
    its correction)."""
    results = {}
    clients = settings(overrides).clients
    for name in strategies:          # every run's settings checked before an engine starts
        settings({**overrides, "strategy": name})
    with engine_runner(engine, clients, workdir) as run:
        for name in strategies:
            start = time.perf_counter()
            history = run({**overrides, "strategy": name})
            check_history(name, history)
            results[name] = {"history": history, "wall_s": time.perf_counter() - start}
            print(f"federated {name}: " + ", ".join(
                f"round {r['round']} acc {r.get('accuracy', float('nan')):.3f}"
                for r in history), flush=True)
    figures = {}
    for name, res in results.items():
        last = res["history"][-1]
        figures[f"{name}.final_accuracy"] = last.get("accuracy")
        figures[f"{name}.bytes_per_client"] = last.get("bytes_per_client")
        figures[f"{name}.mean_aggregation_error"] = (
            sum(r["error"] for r in res["history"][1:]) / max(1, len(res["history"]) - 1))
        figures[f"{name}.wall_s"] = res["wall_s"]
        if "init_bytes_per_client" in res["history"][0]:      # Fed-SB's init round
            figures[f"{name}.init_bytes_per_client"] = res["history"][0]["init_bytes_per_client"]
        corrected = [r for r in res["history"][1:] if "similarity_after" in r]
        for when in ("before", "after") if corrected else ():    # LoRA-FAIR's S(Ŵ, B̄Ā)
            figures[f"{name}.mean_similarity_{when}"] = (
                sum(r[f"similarity_{when}"] for r in corrected) / len(corrected))
        if "epsilon" in last:
            figures[f"{name}.epsilon"] = last["epsilon"]
    return results, figures


def check_history(name: str, history: list[dict]) -> None:
    """Refuse a run with a training round that aggregated nothing (every reply failed or
    was rejected), naming the round and each client's reason."""
    from .strategy import reasons
    for row in history[1:]:
        if "error" not in row:
            raise RunError(f"federated {name}: round {row['round']} had no usable client "
                           f"update ({reasons(row.get('rejected', []), row.get('failed', []))})")


def run_all(out_dir: Path, strategies=STRATEGIES, engine: str = "simulation",
            **overrides) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, figures = measure(strategies, engine, out / "deployment", **overrides)
    used = {k: v for k, v in {**FederatedConfig(), **overrides}.items() if k != "strategy"}
    summary = {"engine": engine, "settings": used, "figures": figures, "runs": results}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    plot_accuracy(results, out / "accuracy.png")
    lines = [f"# Federated LoRA (Flower {engine} engine)", "",
             f"settings: `{json.dumps(summary['settings'])}`", "",
             "| strategy | final accuracy | bytes/client/round | mean aggregation error | wall s |",
             "|---|---|---|---|---|"]
    for name in results:
        lines.append(f"| {name} | {figures[f'{name}.final_accuracy']:.3f} | "
                     f"{figures[f'{name}.bytes_per_client']} | "
                     f"{figures[f'{name}.mean_aggregation_error']:.3g} | "
                     f"{figures[f'{name}.wall_s']:.1f} |")
    if any(f"{name}.epsilon" in figures for name in results):
        lines += ["", "DP-SGD per client; ε spent by the end (worst client, δ = "
                  f"{used['dp.delta']}): " + ", ".join(
                      f"{name} {figures[f'{name}.epsilon']:.2f}" for name in results
                      if f"{name}.epsilon" in figures)]
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


def _flag(text: str) -> bool:
    if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("1", "true", "yes")


TYPES = {"bool": _flag, "int": int, "float": float, "str": str}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="lorakit federated run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strategies", default=",".join(STRATEGIES),
                    help="comma-separated strategies to run, each on its own "
                         f"(default: {','.join(STRATEGIES)})")
    ap.add_argument("--engine", choices=ENGINES, default="simulation",
                    help="simulation (Ray) or deployment (SuperLink and SuperNodes on "
                         "loopback)")
    ap.add_argument("--out", type=Path, default=Path("federated_run"),
                    help="folder for results.json, report.md and accuracy.png")
    defaults = FederatedConfig()
    for key, kind, choices, text in options():
        if key not in ("strategy", "history-file"):
            value = defaults[key]
            ap.add_argument(f"--{key}", dest=key, type=TYPES[kind], default=value,
                            choices=choices, help=f"{text} (default: {value})")
    args = vars(ap.parse_args(argv))
    out, names, engine = args.pop("out"), args.pop("strategies").split(","), args.pop("engine")
    run_all(out, names, engine, **args)
    print(f"federated: wrote {out}/report.md")
    return 0


def demo(out_dir: Path = Path("federated_demo"), threads: int = 1) -> dict:
    """Four strategies, four clients (one domain each), three rounds on the tiny base, on
    the deployment engine (a SuperLink and four SuperNodes on loopback)."""
    return run_all(out_dir, STRATEGIES, "deployment", clients=4, rounds=3)
