"""Benchmark suite `federated`: FedAvg-LoRA, FFA-LoRA, LoRA-FAIR and Fed-SB on Flower's
simulation engine (lorakit.plugins.federated), the same rounds and local steps for each.

Base: the plugin's tiny random BERT on its synthetic four-domain token task, one domain
per client (MiniLM and the four-domain sentiment data are not wired to the federated
apps yet, so these figures say nothing about the papers' MiniLM-scale claims). No DP.

Figures per strategy (mean over seeds): final global accuracy, bytes sent per client per
round, mean aggregation error ‖aggregated ΔW − Σ pᵢ ΔWᵢ‖_F, wall time.

    run(out_dir, threads=1, quick=False) -> {"figures", "rows", "notes"} (+ accuracy.png)
    full: 4 clients, 5 rounds, 10 local steps, seeds 0-2; quick: 2 clients, 2 rounds,
    3 local steps, seed 0.
"""
from __future__ import annotations

from pathlib import Path

import torch

from lorakit.plugins.federated.aggregation import STRATEGIES
from lorakit.plugins.federated.run import measure, plot_accuracy

SUITE = "federated"


def run(out_dir, threads: int = 1, quick: bool = False) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    seeds = [0] if quick else [0, 1, 2]
    setting = ({"clients": 2, "rounds": 2, "local-steps": 3} if quick
               else {"clients": 4, "rounds": 5, "local-steps": 10})
    rows, per_seed = [], []
    for seed in seeds:
        results, figures = measure(STRATEGIES, seed=seed, **setting)
        per_seed.append(figures)
        if seed == seeds[0]:
            plot_accuracy(results, out / "accuracy.png")
        for name, res in results.items():
            for r in res["history"]:
                rows.append({"seed": seed, "strategy": name, "round": r["round"],
                             "accuracy": r.get("accuracy"), "error": r.get("error"),
                             "bytes_per_client": r.get("bytes_per_client"),
                             "clients": r.get("clients")})
    figures = {k: sum(f[k] for f in per_seed) / len(per_seed) for k in per_seed[0]}
    fedavg_bytes = figures["fedavg.bytes_per_client"]
    figures["fedsb.bytes_vs_fedavg"] = figures["fedsb.bytes_per_client"] / fedavg_bytes
    figures["ffa.bytes_vs_fedavg"] = figures["ffa.bytes_per_client"] / fedavg_bytes
    notes = (f"Setting: {setting}, seeds {seeds}, tiny random BERT, synthetic four-domain "
             "task, one domain per client, Flower simulation engine (Ray). No DP runs.")
    return {"figures": figures, "rows": rows, "notes": notes, "plots": ["accuracy.png"]}
