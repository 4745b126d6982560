"""Core suite: lorakit LoRA against PEFT LoRA and full fine-tuning on one transformers BERT,
and mixed-adapter batches (`core_mixed_batches.py`).

Step time: the three contenders live in one process and are timed in turns
(round-robin, median of rounds), so load on the machine hits them alike.
Peak memory: each contender trains in a fresh process (`python -m ... --memory NAME`)
and reports its peak resident set size, since CPU memory has no per-phase counter.
Merged inference: a merged lorakit adapter against the bare base, in turns.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from lorakit.benchmarks.common.memory import reset_peak_rss, rss_mb
from lorakit.benchmarks.suites import core_mixed_batches as mixed_batches

SUITE = "core"
SIZES = {"full": dict(hidden=256, layers=4, heads=4, seq=128, batch=16, vocab=8000),
         "quick": dict(hidden=64, layers=2, heads=2, seq=32, batch=4, vocab=500)}
CONTENDERS = ("lorakit", "peft", "full")


def build_bert(size: dict, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=size["vocab"], hidden_size=size["hidden"],
                     num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
                     intermediate_size=4 * size["hidden"], max_position_embeddings=size["seq"],
                     num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg).train()


def prepare(name: str, size: dict):
    """(model, optimizer) for one contender, all starting from the same base weights."""
    import lorakit

    model = build_bert(size)
    if name == "lorakit":
        adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=8, alpha=16,
                                                            targets=["*.query", "*.value"]))
        params = list(adapters.parameters())
    elif name == "peft":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                 target_modules=["query", "value"]))
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        params = list(model.parameters())
    return model, torch.optim.AdamW(params, lr=1e-4)


def batch(size: dict, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, size["vocab"], (size["batch"], size["seq"]), generator=g)
    labels = torch.randint(0, 2, (size["batch"],), generator=g)
    return ids, labels


def step(model, opt, ids, labels) -> None:
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def time_steps(size: dict, rounds: int, steps: int) -> dict[str, float]:
    ids, labels = batch(size)
    setups = {name: prepare(name, size) for name in CONTENDERS}
    for model, opt in setups.values():  # warm-up: allocator, optimizer state
        step(model, opt, ids, labels)
    times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for _ in range(rounds):
        for name, (model, opt) in setups.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                step(model, opt, ids, labels)
            times[name].append((time.perf_counter() - t0) / steps)
    return {name: statistics.median(v) for name, v in times.items()}


def time_inference(size: dict, rounds: int, steps: int) -> dict[str, float]:
    import lorakit

    ids, _ = batch(size)
    base = build_bert(size).eval()
    merged = build_bert(size).eval()
    adapters = lorakit.attach(merged, lorakit.LoRAConfig(rank=8, alpha=16,
                                                         targets=["*.query", "*.value"]))
    with torch.no_grad():
        for variant in adapters.variants().values():
            variant.lora_B.normal_(std=0.02)
    adapters.merge()
    models = {"base": base, "merged": merged}
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            m(input_ids=ids)
        for _ in range(rounds):
            for name, m in models.items():
                t0 = time.perf_counter()
                for _ in range(steps):
                    m(input_ids=ids)
                times[name].append((time.perf_counter() - t0) / steps)
    return {name: statistics.median(v) for name, v in times.items()}


def memory_child(name: str, size_name: str, steps: int) -> dict:
    """Runs in a fresh process: peak RSS of training one contender."""
    size = SIZES[size_name]
    ids, labels = batch(size)
    model, opt = prepare(name, size)
    before = rss_mb("VmRSS")
    reset_peak_rss()
    for _ in range(steps):
        step(model, opt, ids, labels)
    peak = rss_mb("VmHWM")
    return {"peak_rss_mb": peak, "training_mb": peak - before}


def measure_memory(size_name: str, threads: int, steps: int = 3) -> dict[str, dict]:
    out = {}
    for name in CONTENDERS:
        cmd = [sys.executable, "-m", "lorakit.benchmarks.suites.core", "--memory", name,
               "--size", size_name, "--threads", str(threads), "--steps", str(steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def plot(out_dir: Path, step_times: dict, memory: dict, inference: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    axes[0].bar(list(step_times), [1000 * v for v in step_times.values()], color="C0")
    axes[0].set_title("training step (ms)")
    axes[1].bar(list(memory), [m["peak_rss_mb"] for m in memory.values()], color="C1")
    axes[1].set_title("peak RSS while training (MB)")
    axes[2].bar(list(inference), [1000 * v for v in inference.values()], color="C2")
    axes[2].set_title("inference forward (ms)")
    fig.tight_layout()
    fig.savefig(out_dir / "core_benchmark.png", dpi=100)
    plt.close(fig)


def run(out_dir: Path, threads: int = 1, quick: bool = False) -> dict:
    size_name = "quick" if quick else "full"
    size = SIZES[size_name]
    rounds, steps = (3, 2) if quick else (7, 3)
    step_times = time_steps(size, rounds, steps)
    inference = time_inference(size, rounds, steps * 2)
    memory = measure_memory(size_name, threads)
    trainable = {}
    for name in CONTENDERS:
        model, opt = prepare(name, size)
        trainable[name] = sum(p.numel() for g in opt.param_groups for p in g["params"])
    rows = [{"contender": name, "step_ms": 1000 * step_times[name],
             "peak_rss_mb": memory[name]["peak_rss_mb"],
             "training_mb": memory[name]["training_mb"], "trainable_params": trainable[name]}
            for name in CONTENDERS]
    rows += [{"contender": f"inference: {k}", "step_ms": 1000 * v} for k, v in inference.items()]
    figures = {
        "step_time_vs_peft": step_times["lorakit"] / step_times["peft"],
        "step_time_vs_full": step_times["lorakit"] / step_times["full"],
        "peak_memory_vs_peft": memory["lorakit"]["peak_rss_mb"] / memory["peft"]["peak_rss_mb"],
        "training_memory_vs_peft": memory["lorakit"]["training_mb"]
        / max(memory["peft"]["training_mb"], 1e-9),
        "merged_inference_vs_base": inference["merged"] / inference["base"],
    }
    plot(out_dir, step_times, memory, inference)
    mixed = mixed_batches.run(out_dir, size_name, threads, rounds=3 if quick else 15)
    rows += mixed["rows"]
    figures.update(mixed["figures"])
    notes = (f"BERT hidden {size['hidden']}, {size['layers']} layers, sequence {size['seq']}, "
             f"batch {size['batch']}, rank 8 on query/value, AdamW; {threads} torch thread(s). "
             f"Step times: median of {rounds} rounds of {steps} steps, contenders in turns in "
             "one process. Memory: peak RSS of a fresh process per contender while it trains (the peak is "
             "reset after imports and model building; training_mb = peak minus the RSS before "
             "the first step). Goals: step_time_vs_peft <= 1.0, "
             "peak_memory_vs_peft <= 1.0, merged_inference_vs_base <= 1.02.\n\n" + mixed["notes"])
    return {"figures": figures, "rows": rows, "notes": notes}


def _worker_options(p) -> None:
    work = p.add_mutually_exclusive_group()
    work.add_argument("--memory", choices=CONTENDERS,
                      help="worker: peak RSS of this contender while training, in this process")
    work.add_argument("--idle-memory", type=int, metavar="N",
                      help="worker: resident memory added by N idle named adapters")
    p.add_argument("--size", choices=list(SIZES), default="full", help="worker: model size")
    p.add_argument("--steps", type=int, default=3, help="worker: training steps")


def _memory_worker(a) -> bool:
    """--memory / --idle-memory: one memory measurement in a fresh process, printed as JSON."""
    if not (a.memory or a.idle_memory):
        return False
    torch.set_num_threads(a.threads)
    if a.idle_memory:
        print(json.dumps(mixed_batches.idle_memory_child(a.size, a.idle_memory)))
    else:
        print(json.dumps(memory_child(a.memory, a.size, a.steps)))
    return True


if __name__ == "__main__":
    from lorakit.benchmarks.common.command_line import suite_main

    suite_main(SUITE, __doc__, run, options=_worker_options, worker=_memory_worker)
