"""The MLM pre-training recipe, the shipped base, and the LightningCLI wiring."""
import json
from pathlib import Path

import pytest
import torch

from lorakit.domains.genomics.fasta import Record, write_fasta
from lorakit.domains.genomics.kmer import KmerTokenizer
from lorakit.plugins.lorabert import PLUGIN
from lorakit.plugins.lorabert.module import BASE_DIR, COMPACT_DIR, LoRABertModule
from lorakit.plugins.lorabert.pretrain import main, mask_spans


def test_span_masking_masks_whole_spans_of_real_tokens_only():
    tok = KmerTokenizer(6, 3)
    ids = torch.tensor([tok.encode("ACGT" * 200)])
    ids = torch.cat([ids, torch.zeros(1, 10, dtype=torch.long)], 1)  # padding
    attn = (ids != tok.pad_id).long()
    inputs, labels = mask_spans(ids, attn, tok, span=3, prob=0.15,
                                gen=torch.Generator().manual_seed(0))
    masked = labels[0] != -100
    assert 0.08 < masked.float().sum() / attn.sum() < 0.25
    assert not masked[0] and not masked[attn.sum() - 1] and not masked[-10:].any()
    assert (labels[0][masked] == ids[0][masked]).all()
    runs, run = [], 0
    for m in masked.tolist() + [False]:
        if m:
            run += 1
        elif run:
            runs.append(run)
            run = 0
    assert min(runs) >= 3 or runs[-1] < 3  # spans are cut only by the sequence's end
    assert (inputs[0][masked] == tok.mask_id).float().mean() > 0.6


def random_fasta(path, n: int, length: int):
    """`n` uniform random sequences of `length` nt, seed 0."""
    rng = torch.Generator().manual_seed(0)
    seqs = ["".join("ACGT"[i] for i in torch.randint(0, 4, (length,), generator=rng).tolist())
            for _ in range(n)]
    return write_fasta([Record(f"s{i}", s) for i, s in enumerate(seqs)], path)


def test_pretrain_writes_a_folder_the_classifier_loads(tmp_path):
    fasta = random_fasta(tmp_path / "u.fa", n=30, length=300)
    out = tmp_path / "base"
    log = main(["--data.fasta", str(fasta), "--out", str(out), "--hidden", "32", "--layers",
                "1", "--heads", "2", "--max-tokens", "40", "--batch-size", "4", "--steps",
                "6", "--save-every", "3", "--log-every", "3", "--warmup", "2"])
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "kmer_tokenizer.json", "model.safetensors", "pretrain_log.json",
        "vocab.txt"]
    saved = json.loads((out / "pretrain_log.json").read_text())
    assert saved["step"] == 6 and saved["command"].endswith("--warmup 2")
    assert [h["step"] for h in log["history"]] == [3, 6] and "val_loss" in log["history"][-1]
    assert not (tmp_path / "base.tmp").exists() and not (tmp_path / "base.old").exists()
    m = LoRABertModule(pretrained=str(out))
    assert (m.tokenizer.k, m.tokenizer.stride, m.max_tokens) == (6, 3, 40)
    # --init continues from the folder: its tokenizer and weights, not --k / --hidden
    more = tmp_path / "more"
    again = main(["--data.fasta", str(fasta), "--out", str(more), "--init", str(out),
                  "--k", "4", "--hidden", "64", "--max-tokens", "40", "--batch-size", "4",
                  "--steps", "1", "--save-every", "1", "--log-every", "1", "--warmup", "1"])
    assert (again["k"], again["stride"], again["params"]) == (6, 3, log["params"])
    assert again["recipe"] == [log["command"], again["command"]]    # the chain that made it


def test_codon_pretraining_reads_three_frames_and_masks_single_codons(tmp_path):
    fasta = random_fasta(tmp_path / "u.fa", n=24, length=200)
    out = tmp_path / "codon"
    log = main(["--data.fasta", str(fasta), "--out", str(out), "--k", "3", "--stride", "3",
                "--frames", "3", "--hidden", "32", "--layers", "1", "--heads", "2",
                "--max-tokens", "30", "--batch-size", "4", "--steps", "2", "--save-every",
                "2", "--log-every", "2", "--warmup", "1"])
    # a codon never overlaps its neighbours, so a lone masked codon is not spelled out
    assert (log["k"], log["stride"], log["frames"], log["span"]) == (3, 3, 3, 1)
    assert json.loads((out / "kmer_tokenizer.json").read_text())["frames"] == 3
    m = LoRABertModule(pretrained=str(out))
    assert (m.tokenizer.k, m.tokenizer.stride, m.tokenizer.frames) == (3, 3, 3)


def test_shipped_base_is_a_small_transformers_folder_with_its_recipe():
    sizes = sum(p.stat().st_size for p in BASE_DIR.iterdir())
    assert sizes < 20 * 2 ** 20
    config = json.loads((BASE_DIR / "config.json").read_text())
    assert config["model_type"] == "bert" and config["attention_probs_dropout_prob"] == 0.0
    log = json.loads((BASE_DIR / "pretrain_log.json").read_text())
    recipe = log.get("recipe", [log["command"]])
    assert "--data.cpat_train" in recipe[0] and log["step"] >= 1000
    # the tokenizer shipped is the one the recorded recipe trained
    tok = KmerTokenizer.from_folder(BASE_DIR)
    assert (tok.k, tok.stride, tok.frames) == (log["k"], log["stride"], log["frames"])
    assert f"--frames {log['frames']}" in recipe[0]
    import lorakit.plugins.lorabert.pretrain as recipe
    assert "--data.cpat_train" in recipe.__doc__
    # the default base was grown from the compact one, which ships beside it as made
    compact = json.loads((COMPACT_DIR / "pretrain_log.json").read_text())
    assert log["recipe"] == [compact["command"], log["recipe"][1]]
    assert "--init plugins/lorabert/assets/base_compact --grow" in log["recipe"][1]
    assert json.loads((COMPACT_DIR / "config.json").read_text())["num_hidden_layers"] < \
        config["num_hidden_layers"]


def test_plugin_registration_points_at_real_objects():
    from lorakit.registry import resolve
    assert PLUGIN.installed
    assert resolve(PLUGIN.module) is LoRABertModule
    assert resolve(PLUGIN.commands["pretrain"]) is main
    assert Path(PLUGIN.default_config).is_file()
    assert callable(resolve(PLUGIN.demo)) and callable(resolve(PLUGIN.bench_suite))


def test_default_config_and_cli_flags_parse_with_lightning_cli(tmp_path):
    from lightning.pytorch.cli import LightningCLI

    from lorakit.plugins.lorabert.data import TranscriptDataModule
    cli = LightningCLI(LoRABertModule, TranscriptDataModule, run=False,
                       args=["--config", PLUGIN.default_config, "--data.coding", "a.fa",
                             "--data.noncoding", "b.fa.gz", "--model.long_mode", "head_tail",
                             "--trainer.default_root_dir", str(tmp_path)],
                       save_config_kwargs={"overwrite": True})
    assert cli.datamodule.source == "files"
    assert cli.datamodule.files["coding"] == ["a.fa"]
    assert cli.model.long_mode == "head_tail" and cli.model.mode == "lora"


def test_pretrain_without_data_says_what_to_give(tmp_path):
    from lorakit.errors import DataError
    with pytest.raises(DataError, match="--data.fasta FILE"):
        main(["--out", str(tmp_path / "x")])


def test_cli_fit_then_predict_from_the_checkpoint_writes_the_tsv_asked_for(tmp_path,
                                                                          monkeypatch):
    from lightning.pytorch.cli import LightningCLI

    from lorakit.domains.genomics.synthetic import write_synthetic
    from lorakit.plugins.lorabert.data import TranscriptDataModule
    from lorakit.plugins.lorabert.predict_tsv import read_predictions
    monkeypatch.chdir(tmp_path)
    coding, noncoding = write_synthetic(tmp_path / "fa", 6, 6)
    common = ["--config", PLUGIN.default_config, "--trainer.enable_progress_bar", "false",
              "--trainer.logger", "false"]
    LightningCLI(LoRABertModule, TranscriptDataModule,
                 args=["fit", *common, "--data.coding", str(coding), "--data.noncoding",
                       str(noncoding), "--trainer.max_steps", "2",
                       "--trainer.default_root_dir", str(tmp_path)],
                 save_config_callback=None)
    ckpt = next(tmp_path.rglob("*.ckpt"))
    LightningCLI(LoRABertModule, TranscriptDataModule,
                 args=["predict", *common, "--data.fasta", str(coding), "--ckpt_path",
                       str(ckpt), "--model.predictions", str(tmp_path / "mine.tsv")],
                 save_config_callback=None)
    rows = read_predictions(tmp_path / "mine.tsv")
    assert [r["id"] for r in rows] == [f"syn_mRNA_{i:05d}" for i in range(6)]


def test_grow_stacks_layers_and_tiles_positions_and_refuses_to_shrink():
    from transformers import BertConfig, BertForMaskedLM

    from lorakit.errors import LoraKitError
    from lorakit.plugins.lorabert.pretrain import grow_bert
    torch.manual_seed(0)
    small = BertForMaskedLM(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=16,
                                       max_position_embeddings=6))
    grown = grow_bert(small, layers=4, max_positions=11)
    old, new = small.state_dict(), grown.state_dict()
    q = "bert.encoder.layer.{}.attention.self.query.weight"
    assert torch.equal(new[q.format(2)], old[q.format(0)])
    assert torch.equal(new[q.format(3)], old[q.format(1)])
    pos = "bert.embeddings.position_embeddings.weight"
    assert torch.equal(new[pos][:6], old[pos])
    # positions 6..10 repeat the old window's 1..5 ([CLS]'s row 0 is not repeated)
    assert torch.equal(new[pos][6:], old[pos][1:6])
    assert torch.equal(new["bert.embeddings.word_embeddings.weight"],
                       old["bert.embeddings.word_embeddings.weight"])
    with pytest.raises(LoraKitError, match="--grow only grows: the model has 2 layers"):
        grow_bert(small, layers=1, max_positions=11)
