"""lorabert on an NF4 base (QLoRA) through its own command line: `lorakit lorabert fit
--model.adapter.base_quantization nf4` on the embedded synthetic data, then `predict` with
the adapter file it wrote."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lorakit
from lorakit.domains.genomics.fasta import Record, write_fasta
from lorakit.domains.genomics.kmer_bert import load_classifier
from lorakit.errors import LoraKitError
from lorakit.plugins.lorabert.module import COMPACT_DIR, LoRABertModule
from lorakit.plugins.lorabert.predict_tsv import read_predictions

pytest.importorskip("bitsandbytes")
LORAKIT = str(Path(sys.executable).with_name("lorakit"))
# the compact base and short windows keep both commands to a few seconds of work
SMALL = ["--threads", "1", f"--model.pretrained={COMPACT_DIR}", "--model.max_tokens=64",
         "--model.max_train_windows=1"]


def lorakit_cli(*args, cwd):
    return subprocess.run([LORAKIT, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_lorabert_fits_on_an_nf4_base_and_predicts_with_its_adapter_file(tmp_path):
    fit = lorakit_cli("lorabert", "fit", *SMALL, "--model.adapter.base_quantization=nf4",
                      "--data.synthetic_n=40", "--data.batch_size=4", "--trainer.max_steps=3",
                      "--trainer.limit_val_batches=1", "--trainer.logger=false",
                      "--trainer.enable_checkpointing=false", f"--model.output_dir={tmp_path}",
                      f"--trainer.default_root_dir={tmp_path}", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-2000:]
    assert "4 adapted modules on a quantized base (nf4-g64)" in fit.stdout + fit.stderr
    path = tmp_path / "adapter.safetensors"
    meta, _ = lorakit.read_adapter(path)
    assert len(meta["quantization"]) == 4          # query and value of both layers
    assert {r["scheme"] for r in meta["quantization"].values()} == {"nf4-g64"}

    # the plugin quantizes a fresh base as the file records, then loads it
    module = LoRABertModule(pretrained=str(COMPACT_DIR), adapter_file=str(path))
    kinds = {layer.kind.name for layer in module.adapters.layers.values()}
    assert kinds == {"quantized_linear"}
    with pytest.raises(lorakit.AdapterMismatchError, match="full precision here"):
        lorakit.load_adapter(load_classifier(COMPACT_DIR, num_labels=2), path)
    with pytest.raises(LoraKitError, match="base_quantization needs model.mode 'lora'"):
        LoRABertModule(pretrained=str(COMPACT_DIR), mode="full",
                       adapter=lorakit.LoRAConfig(base_quantization="nf4"))

    g = torch.Generator().manual_seed(0)
    seqs = ["".join("ACGT"[i] for i in torch.randint(0, 4, (300,), generator=g).tolist())
            for _ in range(3)]
    write_fasta([Record(f"t{i}", s) for i, s in enumerate(seqs)], tmp_path / "new.fa")
    out = tmp_path / "predictions.tsv"
    predict = lorakit_cli("lorabert", "predict", *SMALL, f"--model.adapter_file={path}",
                          f"--data.fasta={tmp_path / 'new.fa'}", f"--model.predictions={out}",
                          "--trainer.logger=false", cwd=tmp_path)
    assert predict.returncode == 0, predict.stderr[-2000:]
    assert [row["id"] for row in read_predictions(out)] == ["t0", "t1", "t2"]
