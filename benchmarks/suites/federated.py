"""Benchmark suite `federated`: FedAvg-LoRA, FFA-LoRA, LoRA-FAIR and Fed-SB on Flower's
simulation engine (lorakit.plugins.federated), the same rounds and local steps for each.

Base (`--base`): "tiny", the plugin's tiny random BERT on its synthetic four-domain token
task (a smoke test of the machinery: its figures say nothing about the papers' claims),
or "minilm", all-MiniLM-L6-v2 on the four-domain sentiment data (movies, tweets, Amazon,
NYT; 256 training sentences per domain, 128 test), suite `federated-minilm`. One domain
per client either way. Each strategy's learning rate is chosen from the same sweep
(3e-3, 1e-2, 3e-2; quick: the last two) by its final accuracy on the validation split
(seed 0, no DP, `runs/sweep-lr*.json`); the DP arm uses the same rates.

Figures per strategy (mean over seeds): final global accuracy (and its SD over seeds),
bytes sent per client per round (Fed-SB also its one-time init upload, and
`fedsb.run_bytes_vs_fedavg`: its whole run's upload over FedAvg's), mean aggregation error
‖aggregated ΔW − Σ pᵢ ΔWᵢ‖_F, wall time; and the same run again with per-client DP-SGD at
a fixed budget (ε = 8, δ = 1e-5 over the whole run, σ solved per client by Opacus's RDP
accountant; clipping C = 1): `<strategy>.dp.*` and `<strategy>.dp_accuracy_drop` (accuracy
without DP minus with).

    run(out_dir, threads=1, quick=False, base="tiny") -> {"figures", "rows", "notes"}
    (+ accuracy.png, accuracy_dp.png); full: 4 clients, 5 rounds, 10 local steps, seeds
    0-2; quick: 2 clients, 2 rounds, 3 local steps, seed 0 (MiniLM: 64 sentences per
    domain). `python -m lorakit.benchmarks.suites.federated --base minilm` for MiniLM.

Resumable: each sweep point and each (seed, DP off/on, strategy) measurement is written to
`<out>/runs/` (`sweep-lr<lr>.json`, `seed<seed>-<plain|dp>-<strategy>.json`) as it
finishes, with the full run settings it used (the plugin's defaults included); the same
command again skips every measurement whose file holds the same settings and measures the
rest, so a run of hours can be spread over several sessions. A file from other settings is
measured again and overwritten.
"""
from __future__ import annotations

from pathlib import Path

import torch

from lorakit.plugins.federated.aggregation import STRATEGIES, FairConfig
from lorakit.plugins.federated.config import settings
from lorakit.plugins.federated.run import measure, plot_accuracy
from lorakit.reports.bench import cached

SUITE = "federated"
DP = {"dp.enabled": True, "dp.target_epsilon": 8.0, "dp.delta": 1e-5, "dp.max_grad_norm": 1.0}


LRS = (3e-3, 1e-2, 3e-2)        # every strategy's learning-rate sweep (the same three)


def run(out_dir, threads: int = 1, quick: bool = False, base: str = "tiny") -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    seeds = [0] if quick else [0, 1, 2]
    lrs = LRS[1:] if quick else LRS
    setting = ({"clients": 2, "rounds": 2, "local-steps": 3} if quick
               else {"clients": 4, "rounds": 5, "local-steps": 10})
    setting["base"] = base
    if base == "minilm":
        setting.update({"train-per-domain": 64 if quick else 256,
                        "test-per-domain": 64 if quick else 128})
    chosen, sweep = choose_lr(out, setting, lrs, seeds[0])
    rows, per_seed = [], []
    for seed in seeds:
        results, figures = measured_each(out, seed, setting, chosen)
        _, ablation = measured(out, f"seed{seed}-plain-fedsb-random", ("fedsb",),
                               {**setting, "lr": chosen["fedsb"], "fedsb-init": "random"}, seed)
        figures["fedsb.random_init.final_accuracy"] = ablation["fedsb.final_accuracy"]
        private, dp_figures = measured_each(out, seed, {**setting, **DP}, chosen)
        figures.update({k.replace(".", ".dp.", 1): v for k, v in dp_figures.items()})
        per_seed.append(figures)
        if seed == seeds[0]:
            plot_accuracy(results, out / "accuracy.png")
            plot_accuracy(private, out / "accuracy_dp.png")
        for dp, runs in ((False, results), (True, private)):
            for name, res in runs.items():
                for r in res["history"]:
                    rows.append({"seed": seed, "strategy": name, "dp": dp, "round": r["round"],
                                 "lr": chosen[name], "accuracy": r.get("accuracy"),
                                 "error": r.get("error"),
                                 "bytes_per_client": r.get("bytes_per_client"),
                                 "init_bytes_per_client": r.get("init_bytes_per_client"),
                                 "clients": r.get("clients"), "epsilon": r.get("epsilon"),
                                 "similarity_before": r.get("similarity_before"),
                                 "similarity_after": r.get("similarity_after")})
    figures = {k: sum(f[k] for f in per_seed) / len(per_seed) for k in per_seed[0]}
    for name in STRATEGIES:
        figures[f"{name}.dp_accuracy_drop"] = (figures[f"{name}.final_accuracy"]
                                               - figures[f"{name}.dp.final_accuracy"])
        figures[f"{name}.final_accuracy_sd"] = float(torch.tensor(
            [f[f"{name}.final_accuracy"] for f in per_seed]).std()) if len(seeds) > 1 else 0.0
        figures[f"{name}.lr"] = chosen[name]
        for lr, acc in sweep[name].items():
            figures[f"{name}.val_accuracy@lr={lr:g}"] = acc
        figures[f"{name}.dp.noise_over_signal"] = noise_over_signal(
            {**setting, **DP, "strategy": name}, figures[f"{name}.bytes_per_client"])
    fedavg_bytes = figures["fedavg.bytes_per_client"]
    figures["fedsb.bytes_vs_fedavg"] = figures["fedsb.bytes_per_client"] / fedavg_bytes
    figures["ffa.bytes_vs_fedavg"] = figures["ffa.bytes_per_client"] / fedavg_bytes
    rounds = setting["rounds"]
    if "fedsb.init_bytes_per_client" in figures:      # the whole run's upload, init included
        figures["fedsb.run_bytes_vs_fedavg"] = (
            (figures["fedsb.init_bytes_per_client"] + rounds * figures["fedsb.bytes_per_client"])
            / (rounds * fedavg_bytes))
    data = ("tiny random BERT, synthetic four-domain task" if base == "tiny"
            else "all-MiniLM-L6-v2, four-domain sentiment data")
    notes = (f"Setting: {setting}, seeds {seeds}, {data}, one domain per client, Flower "
             "simulation engine (Ray). Learning rate per strategy chosen from "
             f"{list(lrs)} by the final round's accuracy on the validation split (seed "
             f"{seeds[0]}, no DP): {chosen}; the DP arm uses the same. Fed-SB starts from "
             "LoRA-SB's gradient init, gathered in one init round (`fedsb.init_bytes_per_"
             "client`: its one-time upload; `fedsb.random_init.*`: the same runs from "
             "random orthonormal B and A and R = 0, the init's ablation). DP arm: "
             f"{DP}, Poisson sampling at q = batch/n per client; `*.dp.epsilon` is the "
             "worst client's ε spent by the last round (Fed-SB's init steps included). "
             "LoRA-FAIR's server correction: "
             f"{FairConfig.from_settings(settings(setting))}; `fair.mean_similarity_*` is "
             "the mean cosine S(Ŵ, B̄Ā) over modules and rounds before and after it.")
    return {"figures": figures, "rows": rows, "notes": notes,
            "plots": ["accuracy.png", "accuracy_dp.png"]}


def noise_over_signal(overrides: dict, sent_bytes: float) -> float:
    """Under DP, one local step's noise norm over the largest possible signal: the noisy
    gradient is (Σ clipped gᵢ + N(0, σ²C² I_d)) / (q·n), whose signal part has norm ≤ C
    and whose noise has norm ≈ σ·C·√d / (q·n), d the trainable numbers (every trainable
    tensor is sent: d = bytes / 4). Above 1 the noise outweighs any gradient."""
    from lorakit.plugins.federated.data import client_loader
    from lorakit.plugins.federated.privacy import dp_plan
    cfg = settings(overrides)
    n = client_loader(cfg, 0, int(cfg["clients"]))[1]
    q, sigma = dp_plan(cfg, n)
    return sigma * (sent_bytes / 4) ** 0.5 / (q * n)


def choose_lr(out: Path, setting: dict, lrs, seed: int) -> tuple[dict, dict]:
    """({strategy: chosen lr}, {strategy: {lr: final validation accuracy}}): every strategy
    run at each lr in `lrs`, scored on the validation split; the best final accuracy wins
    (ties: the smaller lr)."""
    sweep = {name: {} for name in STRATEGIES}
    for lr in lrs:
        _, figures = measured(out, f"sweep-lr{lr:g}", STRATEGIES,
                              {**setting, "lr": lr, "eval-split": "val"}, seed)
        for name in STRATEGIES:
            sweep[name][lr] = figures[f"{name}.final_accuracy"]
    chosen = {name: max(sorted(accs), key=lambda lr: accs[lr]) for name, accs in sweep.items()}
    return chosen, sweep


def measured_each(out: Path, seed: int, overrides: dict, lrs: dict) -> tuple[dict, dict]:
    """Every strategy at its own learning rate `lrs[name]`, test split, `seed`."""
    arm = "dp" if overrides.get("dp.enabled") else "plain"
    results, figures = {}, {}
    for name in STRATEGIES:
        res, figs = measured(out, f"seed{seed}-{arm}-{name}", (name,),
                             {**overrides, "lr": lrs[name]}, seed)
        results.update(res)
        figures.update(figs)
    return results, figures


def measured(out: Path, stem: str, strategies, overrides: dict, seed: int) -> tuple[dict, dict]:
    """`measure` of `strategies` at `overrides` and `seed`, or what a previous run left in
    `out/runs/<stem>.json` for exactly the same settings."""
    used = {k: v for k, v in settings({**overrides, "seed": seed}).items()
            if k not in ("strategy", "history-file")}

    def compute() -> dict:
        results, figures = measure(strategies, seed=seed, **overrides)
        return {"results": results, "figures": figures}
    done = cached(out / "runs" / f"{stem}.json", compute, {"strategies": list(strategies), **used})
    return done["results"], done["figures"]


if __name__ == "__main__":
    from lorakit.benchmarks.common.command_line import suite_main

    suite_main(SUITE, __doc__, run,
               options=lambda p: p.add_argument("--base", choices=["tiny", "minilm"],
                                                default="tiny"),
               keywords=lambda a: {"base": a.base},
               name=lambda a: SUITE if a.base == "tiny" else f"{SUITE}-{a.base}")
