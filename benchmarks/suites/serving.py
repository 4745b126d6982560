"""Benchmark suite `serving`: many adapters behind SmolLM2-135M (S-LoRA's setting, small).

Base: SmolLM2-135M-Instruct (`lorakit.domains.text.smollm2`), float32, one torch thread.
Adapters: rank 8, alpha 16 on q_proj and v_proj of all 30 layers (the attention
projections PEFT targets on Llama by default; k_proj and o_proj would double the
bytes of the 1,000-adapter run), random with realistic magnitudes: A as LoRA's Kaiming
init, B ~ N(0, 0.02²), so ΔW is a few per cent of W (not trained: serving speed does not
depend on what the numbers mean). 10, 100 and 1,000 adapters, written once as lorakit
files and, for PEFT, exported with `lorakit.export_peft`.

Trace (one per adapter count, the same for every contender): Poisson arrivals at
`rate` requests/s, each request's adapter drawn from a Zipf law over the adapters
(s = 1: adapter k is asked 1/k as often as the first), prompts of 28-36 random
tokens, 16 new tokens, greedy, no stop at end of sequence (every request makes 16).
The trace is replayed in real time: a request cannot start before its arrival.

Contenders:
  lorakit      `AdapterPool` + `Engine` (continuous batching, up to 32 rows)
  peft-naive   PEFT with every adapter loaded; one request at a time, `set_adapter`
  peft-static  PEFT's mixed batch, `generate(..., adapter_names=...)`, in static
               batches of 32 in arrival order (a batch starts when 32 have arrived or the
               trace is over; nobody joins a running batch)
  lorakit-cap  (1,000 adapters) the pool capped at 10 % of the adapters' bytes, cold
  lorakit      (1,000 adapters) every adapter resident before the trace starts
  *-sat        (100 adapters) lorakit and peft-static again on a trace at 8 requests/s,
               which saturates both: their throughput there is their capacity. The naive
               server is saturated by the 2/s trace already (it serves ~0.4 requests/s),
               so the speedup over it compares capacities.

Figures: throughput (generated tokens/s over the replay), p50/p95 latency (arrival to
last token), resident adapter memory, adapter loads per second; greedy agreement of
lorakit with PEFT (fraction of requests with identical tokens); host bytes per idle
adapter (Python allocations per known, non-resident adapter, measured by tracemalloc)
against its tensor bytes.

    run(out_dir, threads=1, quick=False) -> {"figures", "rows", "notes"} (+ serving.png)
    full: 48 requests per trace at 10 and 100 adapters (PEFT naive takes ~3.5 s a request
    on a free core, several times that on the shared ones: the issue's counts scaled down
    to fit), 200 requests at 1,000 adapters (108 distinct adapters, more than the capped
    pool's 100 slots, so it must evict); ~30-45 min on 2 shared cores.
    quick: 10 and 100 adapters, 8 requests, PEFT at 10 only, the cap at 100 adapters.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
import tracemalloc
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

SUITE = "serving"
RANK, ALPHA, TARGETS = 8, 16.0, ["q_proj", "v_proj"]
B_STD = 0.02


@dataclass
class Budget:
    adapter_counts: list[int] = field(default_factory=lambda: [10, 100, 1000])
    peft_counts: list[int] = field(default_factory=lambda: [10, 100])
    requests: int = 48
    requests_large: int = 200         # at the largest count: 108 distinct adapters > 100 slots
    rate: float = 2.0                 # arrivals per second
    saturated_rate: float = 8.0       # a second trace that saturates every contender
    prompt_tokens: tuple[int, int] = (28, 36)
    new_tokens: int = 16
    zipf: float = 1.0
    max_batch: int = 32
    cap_fraction: float = 0.10
    cap_at: int = 1000                # adapter count of the capped run
    seed: int = 0


QUICK = Budget(adapter_counts=[10, 100], peft_counts=[10], requests=8, requests_large=12,
               cap_at=100)


@dataclass
class Arrival:
    at: float                          # seconds after the replay starts
    adapter: str
    prompt: list[int]


def adapter_name(i: int) -> str:
    return f"a{i:04d}"


def make_trace(n_requests: int, n_adapters: int, rate: float, zipf: float,
               prompt_tokens: tuple[int, int], vocab: tuple[int, int], seed: int) -> list[Arrival]:
    """Poisson arrivals (exponential gaps, mean 1/rate), Zipf-distributed adapters."""
    rng = random.Random(seed)
    weights = [1.0 / (k + 1) ** zipf for k in range(n_adapters)]
    at, trace = 0.0, []
    for _ in range(n_requests):
        adapter = rng.choices(range(n_adapters), weights)[0]
        length = rng.randint(*prompt_tokens)
        trace.append(Arrival(at, adapter_name(adapter),
                             [rng.randrange(*vocab) for _ in range(length)]))
        at += rng.expovariate(rate)
    return trace


def write_adapters(model, folder: Path, n: int, seed: int) -> int:
    """n random rank-8 lorakit adapter files for `model`; returns one file's tensor bytes."""
    from safetensors.torch import save_file

    import lorakit
    from lorakit.io.adapter_file import payload

    handle = lorakit.attach(model, lorakit.LoRAConfig(rank=RANK, alpha=ALPHA, targets=TARGETS),
                            name="template")
    meta, template = payload(handle, "template")
    handle.detach()
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    for i in range(n):
        tensors = {}
        for key, t in template.items():
            if key.endswith("lora_A"):      # LoRA's Kaiming-uniform init: bound 1/sqrt(in)
                bound = 1.0 / math.sqrt(t.shape[1])
                tensors[key] = (torch.rand(t.shape, generator=gen) * 2 - 1) * bound
            else:
                tensors[key] = torch.randn(t.shape, generator=gen) * B_STD
        save_file(tensors, folder / f"{adapter_name(i)}.safetensors",
                  metadata={"lorakit": json.dumps({**meta, "name": adapter_name(i)})})
    return sum(t.numel() * t.element_size() for t in template.values())


# --- the contenders, each replaying the trace in real time ---------------------------------
def summarise(name: str, n_adapters: int, trace: list[Arrival], finished: dict[int, float],
              start: float, tokens: dict[int, list[int]], **extra) -> dict:
    latencies = sorted(finished[i] - (start + a.at) for i, a in enumerate(trace))
    span = max(finished.values()) - start
    generated = sum(len(t) for t in tokens.values())
    return {"contender": name, "adapters": n_adapters, "requests": len(trace),
            "tokens_per_s": generated / span, "p50_s": percentile(latencies, 50),
            "p95_s": percentile(latencies, 95), "seconds": span, **extra}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile, linear between the closest ranks (numpy's default)."""
    values = sorted(values)
    pos = (len(values) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def run_lorakit(model, folder: Path, trace: list[Arrival], budget: Budget, name: str,
                max_resident_bytes: int | None = None, preload: bool = False):
    from lorakit.serving import AdapterPool, Engine, Request

    pool = AdapterPool(model, folder, max_resident_bytes=max_resident_bytes)
    try:
        if preload:
            for adapter in pool.names:
                pool.release(pool.acquire(adapter))
        engine = Engine(model, pool, max_batch=budget.max_batch)
        warm = Engine(model, pool, max_batch=1)
        warm.submit(Request(trace[0].prompt, None, max_new_tokens=2, stop_at_eos=False))
        warm.run()
        loads_before = pool.loads
        finished, tokens, i = {}, {}, 0
        start = time.perf_counter()
        while len(finished) < len(trace):
            now = time.perf_counter() - start
            while i < len(trace) and trace[i].at <= now:
                engine.submit(Request(trace[i].prompt, trace[i].adapter,
                                      max_new_tokens=budget.new_tokens, stop_at_eos=False))
                i += 1
            if engine.busy:
                for ticket, completion in engine.step():
                    if completion.error:
                        raise RuntimeError(f"request {ticket} failed: {completion.error}")
                    finished[ticket] = time.perf_counter()
                    tokens[ticket] = completion.tokens
            else:
                time.sleep(max(0.0, trace[i].at - now))
        row = summarise(name, len(pool.names), trace, finished, start, tokens,
                        resident_mb=pool.resident_bytes / 2**20, slots=pool.slots,
                        loads=pool.loads - loads_before,
                        loads_per_s=(pool.loads - loads_before) / (max(finished.values()) - start))
    finally:
        pool.close()
    return row, tokens


def peft_model(base, peft_dirs: list[Path]):
    from peft import PeftModel

    base.generation_config.eos_token_id = None      # every request makes its 16 tokens
    base.generation_config.pad_token_id = 0
    model = PeftModel.from_pretrained(base, peft_dirs[0], adapter_name=peft_dirs[0].name)
    for folder in peft_dirs[1:]:
        model.load_adapter(folder, adapter_name=folder.name)
    return model.eval()


def lora_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters()
               if "lora_" in n)


def wait_until(start: float, at: float) -> None:
    delay = start + at - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


@torch.no_grad()
def run_peft_naive(model, trace: list[Arrival], budget: Budget):
    finished, tokens = {}, {}
    model.set_adapter(trace[0].adapter)
    model.generate(torch.tensor([trace[0].prompt]), max_new_tokens=2, do_sample=False)
    start = time.perf_counter()
    for i, a in enumerate(trace):
        wait_until(start, a.at)
        model.set_adapter(a.adapter)
        ids = torch.tensor([a.prompt])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=budget.new_tokens, do_sample=False)
        finished[i], tokens[i] = time.perf_counter(), out[0, len(a.prompt):].tolist()
    row = summarise("peft-naive", len(model.peft_config), trace, finished, start, tokens,
                    resident_mb=lora_bytes(model) / 2**20, loads=0, loads_per_s=0.0)
    return row, tokens


@torch.no_grad()
def run_peft_static(model, trace: list[Arrival], budget: Budget, name: str = "peft-static"):
    finished, tokens = {}, {}
    model.generate(torch.tensor([trace[0].prompt]), max_new_tokens=2, do_sample=False,
                   adapter_names=[trace[0].adapter])
    start = time.perf_counter()
    for first in range(0, len(trace), budget.max_batch):
        batch = list(range(first, min(first + budget.max_batch, len(trace))))
        wait_until(start, trace[batch[-1]].at)       # the batch is full (or the trace over)
        width = max(len(trace[i].prompt) for i in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(batch):
            n = len(trace[i].prompt)
            ids[row, width - n:] = torch.tensor(trace[i].prompt)
            mask[row, width - n:] = 1
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                             max_new_tokens=budget.new_tokens,
                             adapter_names=[trace[i].adapter for i in batch])
        done = time.perf_counter()
        for row, i in enumerate(batch):
            finished[i], tokens[i] = done, out[row, width:].tolist()
    row = summarise(name, len(model.peft_config), trace, finished, start, tokens,
                    resident_mb=lora_bytes(model) / 2**20, loads=0, loads_per_s=0.0)
    return row, tokens


def idle_bytes_per_adapter(model, folder: Path) -> float:
    """Python allocations of a pool that knows every adapter in `folder` and holds none
    (one slot), per adapter: what an idle adapter costs on the host."""
    from lorakit.serving import AdapterPool

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    pool = AdapterPool(model, folder, max_resident_bytes=1)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    n = len(pool.names)
    pool.close()
    return (after - before) / n


def agreement(a: dict[int, list[int]], b: dict[int, list[int]]) -> float:
    return sum(a[i] == b[i] for i in a) / len(a)


# --- the suite ------------------------------------------------------------------------------
def goal_figures(rows: list[dict], at: int, cap_at: int) -> dict:
    """The issue's goals as ratios measured in this run (missing contenders are skipped)."""
    def find(contender, n):
        return next((r for r in rows if r["contender"] == contender and r["adapters"] == n),
                    None)
    figures = {}
    lk, naive, static = find("lorakit", at), find("peft-naive", at), find("peft-static", at)
    lk_sat, static_sat = find("lorakit-sat", at), find("peft-static-sat", at)
    # throughput is capacity: the naive server is saturated by the Poisson trace already,
    # lorakit by the faster one
    if (lk_sat or lk) and naive:
        figures[f"speedup_vs_peft_naive_{at}"] = ((lk_sat or lk)["tokens_per_s"]
                                                 / naive["tokens_per_s"])
    if lk and static:
        figures[f"throughput_vs_peft_static_{at}"] = lk["tokens_per_s"] / static["tokens_per_s"]
        figures[f"p95_vs_peft_static_{at}"] = lk["p95_s"] / static["p95_s"]
    if lk_sat and static_sat:
        figures[f"throughput_vs_peft_static_saturated_{at}"] = (lk_sat["tokens_per_s"]
                                                               / static_sat["tokens_per_s"])
    capped, resident = find("lorakit-cap", cap_at), find("lorakit", cap_at)
    if capped and resident:
        figures[f"capped_vs_resident_throughput_{cap_at}"] = (capped["tokens_per_s"]
                                                              / resident["tokens_per_s"])
    return figures


def run(out_dir, threads: int = 1, quick: bool = False, budget: Budget | None = None) -> dict:
    import lorakit
    from lorakit.domains.text.smollm2 import smollm2

    torch.set_num_threads(threads)
    budget = budget or (QUICK if quick else Budget())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = smollm2()
    vocab = (1000, min(tokenizer.vocab_size, 30000))
    work = Path(tempfile.mkdtemp(prefix="lorakit-serving-"))
    rows, figures, agree = [], {}, {}
    at = 100 if 100 in budget.peft_counts else max(budget.peft_counts)
    try:
        largest = max(budget.adapter_counts)
        tensor_bytes = write_adapters(model, work / "lorakit", largest, budget.seed)
        figures["adapter_tensor_bytes"] = tensor_bytes
        for n in budget.adapter_counts:
            folder = work / f"lorakit-{n}"
            folder.mkdir()
            for i in range(n):         # the first n adapters, linked: no second copy on disk
                (folder / f"{adapter_name(i)}.safetensors").symlink_to(
                    work / "lorakit" / f"{adapter_name(i)}.safetensors")
            count = budget.requests_large if n == largest and n > max(budget.peft_counts) \
                else budget.requests
            trace = make_trace(count, n, budget.rate, budget.zipf, budget.prompt_tokens, vocab,
                               budget.seed + n)
            row, lk_tokens = run_lorakit(model, folder, trace, budget, "lorakit",
                                         preload=n == budget.cap_at)
            rows.append(row)
            if n == budget.cap_at:
                cap = int(budget.cap_fraction * n * tensor_bytes)
                capped, cap_tokens = run_lorakit(model, folder, trace, budget, "lorakit-cap",
                                                 max_resident_bytes=cap)
                rows.append(capped)
                agree[f"greedy_agreement_capped_vs_resident_{n}"] = agreement(cap_tokens,
                                                                             lk_tokens)
                figures[f"idle_adapter_host_bytes_{n}"] = idle_bytes_per_adapter(model, folder)
            row["rate"] = budget.rate
            if n in budget.peft_counts:
                peft_dirs = []
                for i in range(n):
                    peft_dirs.append(lorakit.export_peft(
                        folder / f"{adapter_name(i)}.safetensors", work / f"peft-{n}" /
                        adapter_name(i)))
                base, _ = smollm2()
                pm = peft_model(base, peft_dirs)
                row, naive_tokens = run_peft_naive(pm, trace, budget)
                rows.append(row)
                row, static_tokens = run_peft_static(pm, trace, budget)
                rows.append(row)
                if n == at:            # capacity: a trace faster than any contender serves
                    fast = make_trace(count, n, budget.saturated_rate, budget.zipf,
                                      budget.prompt_tokens, vocab, budget.seed + n + 1)
                    rows.append(run_lorakit(model, folder, fast, budget, "lorakit-sat")[0])
                    rows.append(run_peft_static(pm, fast, budget, "peft-static-sat")[0])
                agree[f"greedy_agreement_vs_peft_naive_{n}"] = agreement(lk_tokens, naive_tokens)
                agree[f"greedy_agreement_vs_peft_static_{n}"] = agreement(lk_tokens,
                                                                         static_tokens)
                del pm, base
            for r in rows:
                r.setdefault("rate", budget.saturated_rate if r["contender"].endswith("-sat")
                             else budget.rate)
            print(f"[serving] {n} adapters done: " + ", ".join(
                f"{r['contender']} {r['tokens_per_s']:.1f} tok/s p95 {r['p95_s']:.2f}s"
                for r in rows if r["adapters"] == n), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for r in rows:
        key = f"{r['contender']}_{r['adapters']}"
        for k in ("tokens_per_s", "p50_s", "p95_s", "resident_mb", "loads_per_s"):
            figures[f"{key}_{k}"] = r[k]
    figures.update(agree)
    figures.update(goal_figures(rows, at, budget.cap_at))
    plot(out_dir / "serving.png", rows)
    notes = (f"Budget: {json.dumps(asdict(budget))}. Trace: Poisson arrivals at {budget.rate}/s, "
             f"Zipf(s={budget.zipf}) adapter popularity, random prompts of "
             f"{budget.prompt_tokens[0]}-{budget.prompt_tokens[1]} tokens, {budget.new_tokens} "
             "new tokens, greedy, replayed in real time; one torch thread. Adapters: random "
             f"rank-{RANK} LoRA on {TARGETS} (A Kaiming-uniform, B ~ N(0, {B_STD}²)), not "
             "trained. An idle adapter is on disk, not in host memory: the pool keeps its "
             "header only (idle_adapter_host_bytes) and reads its tensors when a request "
             "needs it. Load average at the end of the run (other jobs share the cores, so "
             f"absolute times are noisy; ratios are measured on the same trace): "
             f"{os.getloadavg()[0]:.1f}.")
    return {"figures": figures, "rows": rows, "notes": notes}


def plot(png: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{r['contender']}\n{r['adapters']}" for r in rows]
    x = range(len(rows))
    ax1.bar(x, [r["tokens_per_s"] for r in rows], color="tab:blue")
    ax1.set_xticks(list(x), labels, fontsize=7)
    ax1.set_ylabel("generated tokens / s")
    ax1.set_title("throughput (contender, adapters)")
    ax2.bar([i - 0.2 for i in x], [r["p50_s"] for r in rows], width=0.4, label="p50")
    ax2.bar([i + 0.2 for i in x], [r["p95_s"] for r in rows], width=0.4, label="p95")
    ax2.set_xticks(list(x), labels, fontsize=7)
    ax2.set_ylabel("latency, arrival to last token (s)")
    ax2.set_yscale("log")
    ax2.legend()
    ax2.set_title("latency under the Poisson trace")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    from lorakit.benchmarks.common.command_line import suite_main

    suite_main(SUITE, __doc__, run)
