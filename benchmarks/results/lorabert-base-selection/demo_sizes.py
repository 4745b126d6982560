"""Timing only: the demo's sizes (400 training transcripts per class, 2 epochs, 300 scored
per class) with each base; scored on the validation split (the test split is not read)."""
import sys
import tempfile
import time

import torch

from lorakit.plugins.lorabert.experiment import cut_per_class, run_model, split_items

torch.set_num_threads(1)
splits = split_items("cpat_human", train_per_class=400)
splits["test"] = cut_per_class(splits["val"], 300, seed=1)
for name, folder in (("embedded", None), ("grown", sys.argv[1])):
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        row = run_model("LoRA-BERT", splits, d, epochs=2, mode="lora", lr=2e-3, pretrained=folder)
    print(name, f"{time.time()-t0:.0f} s total, train {row['train_s']:.0f} s, val MCC {row['mcc']:.3f}", flush=True)
