"""Timing only: the demo's sizes (400 training transcripts per class, 2 epochs, 300 scored
per class) with each base; scored on the validation split (the test split is not read).

    .venv/bin/python -m lorakit.benchmarks.studies.lorabert_demo_sizes   (from the checkout)

Its output is benchmarks/results/lorabert-base-selection/demo_sizes.txt (made when this
script lived in that folder as demo_sizes.py).
"""
import tempfile
import time

import torch

from lorakit.plugins.lorabert.experiment import cut_per_class, run_model, split_items


def main() -> None:
    torch.set_num_threads(1)
    splits = split_items("cpat_human", train_per_class=400)
    splits["test"] = cut_per_class(splits["val"], 300, seed=1)
    # "embedded" in demo_sizes.txt is the compact base: it was plugins/lorabert/base then
    for name, folder in (("compact", "plugins/lorabert/assets/base_compact"),
                         ("grown", "plugins/lorabert/assets/base")):
        t0 = time.time()
        with tempfile.TemporaryDirectory() as d:
            row = run_model("LoRA-BERT", splits, d, epochs=2, mode="lora", lr=2e-3,
                            pretrained=folder)
        print(name, f"{time.time()-t0:.0f} s total, train {row['train_s']:.0f} s, "
              f"val MCC {row['mcc']:.3f}", flush=True)


if __name__ == "__main__":
    main()
