"""What a mixture of LoRA experts costs per training step, dense vs gathered experts.

    python -m lorakit.benchmarks.studies.moe_step_cost [--rounds 3] [--steps 12] [--threads 1]

A random transformers BERT with MiniLM's shapes (6 layers, width 384, FFN 1536; batch
16 × 64 tokens), adapters on the FFN's two matrices as in the `moe` suite, trained
through `AdapterModule` and Lightning's `fit`; step time from `on_train_batch_start` to
`on_train_batch_end` (forward, backward, optimizer step). The configurations are timed
in turns in one process (order reversed every other round); each figure is the median
over rounds, and the ratios are to LoRA r=8, the parameters a top-2-of-8 mixture of
rank-4 experts uses per token.

- `dense`: every expert's r-wide down projection in one matmul, unselected gates zero
  (FLOPs of a rank E·r LoRA);
- `gather`: each token's k experts gathered from the stacks and applied by two batched
  matmuls (`LayerKind.routed`; FLOPs of k experts, plus the copy of their weights);
- DoRA experts: each expert's own DoRA forward, vectorised over the experts (vmap).
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch

import lorakit
from lorakit.quiet import quiet_third_party

from .ggpo_step_cost import step_time

FFN = ["*.intermediate.dense", "*.encoder.layer.?.output.dense"]   # the classifier nests MiniLM under `bert.`
MINILM = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
          "intermediate_size": 1536}
MIX = {"method": "mixture", "rank": 4, "alpha": 8.0, "n_experts": 8, "targets": FFN}
CONFIGS = {
    "LoRA r=8": {"rank": 8, "alpha": 16.0, "targets": FFN},
    "LoRA r=36": {"rank": 36, "alpha": 72.0, "targets": FFN},
    "MixLoRA top-2 of 8, dense": {**MIX, "top_k": 2},
    "MixLoRA top-2 of 8, gather": {**MIX, "top_k": 2, "expert_compute": "gather"},
    "LLaVA-MoLE top-1 of 8, dense": {**MIX, "top_k": 1},
    "LLaVA-MoLE top-1 of 8, gather": {**MIX, "top_k": 1, "expert_compute": "gather"},
    "MixLoRA top-2 of 8, DoRA experts": {**MIX, "top_k": 2, "expert_method": "dora"},
}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    quiet_third_party()
    torch.set_num_threads(a.threads)
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    names = list(CONFIGS)
    for r in range(a.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            config = lorakit.LoRAConfig(**CONFIGS[name])
            times[name].append(step_time(config, a.steps, MINILM, tokens=64))
    med = {name: statistics.median(t) for name, t in times.items()}
    lora = med["LoRA r=8"]
    result = {"step_ms": {n: round(1000 * t, 1) for n, t in med.items()},
              "over_lora_r8": {n: round(t / lora, 3) for n, t in med.items()},
              "rounds": a.rounds, "steps": a.steps, "threads": a.threads}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
