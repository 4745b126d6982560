"""Mixed-adapter batches: one batch of 64 sequences whose rows use 1, 8 or 64 different
rank-8 adapters, on one transformers BERT.

Contenders, timed in turns in one process (median of rounds):
- lorakit: `with adapters.route(ids): model(x)`, one pass (gather + batched matmul);
- PEFT: its own mixed batch, `model(x, adapter_names=[...])`;
- one forward per adapter: the rows of each adapter as their own sub-batch, that adapter
  active (what a server without heterogeneous batching does);
- the bare base, and (for 1 adapter) the plain single-adapter forward.

The adapters are made by PEFT (random A and B), saved in its layout and imported into
lorakit with `import_peft`, so both libraries compute the same function; the largest
difference of their outputs is reported. An idle adapter's memory is measured in a
fresh process: resident memory before and after attaching the adapters, against the
bytes of their tensors.
"""
from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lorakit.benchmarks.common.memory import rss_mb

COUNTS = (1, 8, 64)
BATCH = 64
SIZES = {"full": dict(hidden=256, layers=4, heads=4, seq=32, vocab=8000),
         "quick": dict(hidden=64, layers=2, heads=2, seq=16, vocab=500)}


def build_bert(size: dict, seed: int = 0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=size["vocab"], hidden_size=size["hidden"],
                     num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
                     intermediate_size=4 * size["hidden"], max_position_embeddings=size["seq"],
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertModel(cfg, add_pooling_layer=False).eval()


def names(n: int) -> list[str]:
    return [f"a{i:02d}" for i in range(n)]


def peft_model_with(size: dict, n: int):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"],
                     init_lora_weights=False)
    torch.manual_seed(1)
    model = get_peft_model(build_bert(size), cfg, adapter_name=names(n)[0])
    for name in names(n)[1:]:
        model.add_adapter(name, cfg)
    return model.eval()


def lorakit_model_from(peft_model, size: dict):
    import lorakit

    with tempfile.TemporaryDirectory() as tmp:
        peft_model.save_pretrained(tmp)
        model = build_bert(size)
        adapters = lorakit.import_peft(tmp, model)
    return model, adapters


def row_ids(n_distinct: int) -> list[int]:
    """Which adapter each of the 64 rows uses: n_distinct adapters, evenly, interleaved."""
    return [i % n_distinct for i in range(BATCH)]


def time_mixed(size: dict, rounds: int) -> tuple[dict, float]:
    """Seconds per batch for every (contender, distinct adapters) pair, and the largest
    lorakit-vs-PEFT output difference."""
    n = max(COUNTS)
    peft_model = peft_model_with(size, n)
    model, adapters = lorakit_model_from(peft_model, size)
    all_names = names(n)
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, size["vocab"], (BATCH, size["seq"]), generator=g)

    def routed(ids):
        with adapters.route(torch.tensor(ids)):
            return model(input_ids=x).last_hidden_state

    def peft_mixed(ids):
        return peft_model(input_ids=x, adapter_names=[all_names[i] for i in ids]
                          ).last_hidden_state

    def per_adapter(ids):
        ids_t = torch.tensor(ids)
        out = torch.empty(BATCH, size["seq"], size["hidden"])
        for i in ids_t.unique().tolist():
            rows = (ids_t == i).nonzero().flatten()
            adapters.set_active(all_names[i])
            out[rows] = model(input_ids=x[rows]).last_hidden_state
        return out

    plain = build_bert(size)

    def base(ids):
        return plain(input_ids=x).last_hidden_state

    def single(ids):
        adapters.set_active(all_names[0])
        return model(input_ids=x).last_hidden_state

    cases = {(c, k): (fn, row_ids(k)) for k in COUNTS
             for c, fn in (("lorakit routed", routed), ("PEFT mixed batch", peft_mixed),
                           ("one forward per adapter", per_adapter))}
    cases[("bare base", 0)] = (base, row_ids(1))
    cases[("single adapter, active", 1)] = (single, row_ids(1))
    times: dict = {key: [] for key in cases}
    order = list(cases)
    shuffle = random.Random(0).shuffle
    with torch.inference_mode():
        diff = max(float((routed(row_ids(k)) - peft_mixed(row_ids(k))).abs().max())
                   for k in COUNTS)
        for fn, ids in cases.values():    # warm-up
            fn(ids)
        for _ in range(rounds):
            shuffle(order)                # no contender always runs after the same one
            for key in order:
                fn, ids = cases[key]
                t0 = time.perf_counter()
                fn(ids)
                times[key].append(time.perf_counter() - t0)
    base = times[("bare base", 0)]
    # seconds per batch, and the overhead as the median of per-round differences to the
    # base, which cancels the slow drifts of a shared machine
    return ({key: statistics.median(v) for key, v in times.items()},
            {key: statistics.median(t - b for t, b in zip(v, base)) for key, v in times.items()},
            diff)


def idle_memory_child(size_name: str, n: int) -> dict:
    """In a fresh process: resident memory added by attaching n idle rank-8 adapters."""
    import lorakit

    model = build_bert(SIZES[size_name])
    model(input_ids=torch.zeros(1, 4, dtype=torch.long))     # allocator warm
    before = rss_mb("VmRSS")
    for name in names(n):
        lorakit.attach(model, lorakit.LoRAConfig(rank=8, targets=["*.query", "*.value"]),
                       name=name)
    after = rss_mb("VmRSS")
    handle = lorakit.adapters_of(model)
    tensor_mb = sum(p.numel() * p.element_size() for p in handle.parameters()) / 2 ** 20
    base_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2 ** 20 \
        - tensor_mb
    return {"adapters": n, "rss_added_mb": after - before, "tensor_mb": tensor_mb,
            "base_mb": base_mb}


def measure_idle_memory(size_name: str, threads: int) -> dict:
    cmd = [sys.executable, "-m", "lorakit.benchmarks.suites.core", "--idle-memory",
           str(max(COUNTS)), "--size", size_name, "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plot(out_dir: Path, times: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for contender in ("lorakit routed", "PEFT mixed batch", "one forward per adapter"):
        ax.plot(COUNTS, [BATCH / times[(contender, k)] for k in COUNTS], marker="o",
                label=contender)
    ax.axhline(BATCH / times[("bare base", 0)], color="grey", ls="--", label="bare base")
    ax.set_xscale("log", base=2)
    ax.set_xticks(COUNTS, [str(k) for k in COUNTS])
    ax.set_xlabel("distinct adapters in the batch of 64")
    ax.set_ylabel("sequences / s")
    ax.set_title("mixed-adapter batches")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "mixed_batches.png", dpi=100)
    plt.close(fig)


def run(out_dir: Path, size_name: str, threads: int, rounds: int) -> dict:
    size = SIZES[size_name]
    times, overheads, diff = time_mixed(size, rounds)
    idle = measure_idle_memory(size_name, threads)
    rows = [{"contender": c, "distinct_adapters": k, "batch_ms": 1000 * t,
             "sequences_per_s": BATCH / t, "adapter_overhead_ms": 1000 * overheads[(c, k)]}
            for (c, k), t in times.items()]

    def overhead(contender: str, k: int) -> float:
        return overheads[(contender, k)]
    figures = {
        "mixed64_overhead_vs_peft": overhead("lorakit routed", 64)
        / max(overhead("PEFT mixed batch", 64), 1e-9),
        "mixed64_throughput_vs_per_adapter": times[("one forward per adapter", 64)]
        / times[("lorakit routed", 64)],
        "mixed8_overhead_vs_peft": overhead("lorakit routed", 8)
        / max(overhead("PEFT mixed batch", 8), 1e-9),
        "mixed1_vs_single_adapter": times[("lorakit routed", 1)]
        / times[("single adapter, active", 1)],
        "mixed_max_abs_diff_vs_peft": diff,
        "idle_adapters_rss_vs_tensor_bytes": idle["rss_added_mb"] / idle["tensor_mb"],
        "idle_adapters_tensor_mb": idle["tensor_mb"],
    }
    plot(out_dir, times)
    notes = (f"Mixed batches: BERT hidden {size['hidden']}, {size['layers']} layers, "
             f"{BATCH} sequences of {size['seq']} tokens, {max(COUNTS)} rank-8 adapters on "
             f"query/value made by PEFT and imported into lorakit; median of {rounds} rounds, "
             "contenders in turns (shuffled each round). adapter overhead = the median over rounds "
             "of the time above the bare base's forward in the same round. "
             f"Idle memory: {idle['adapters']} adapters attached in a fresh process added "
             f"{idle['rss_added_mb']:.1f} MB resident for {idle['tensor_mb']:.1f} MB of adapter "
             f"tensors (base weights {idle['base_mb']:.1f} MB, not copied). Goals: "
             "mixed64_overhead_vs_peft <= 0.33, mixed64_throughput_vs_per_adapter >= 5, "
             "mixed1_vs_single_adapter <= 1.1.")
    return {"figures": figures, "rows": rows, "notes": notes}
