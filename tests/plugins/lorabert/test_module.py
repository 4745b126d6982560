"""LoRABertModule: what is trained, how long transcripts are read, that training works."""
import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from lorakit.domains.genomics.metrics import auroc
from lorakit.domains.genomics.synthetic import synthetic_transcripts
from lorakit.errors import CheckpointError, LoraKitError
from lorakit.plugins.lorabert.data import Transcript, TranscriptDataset, collate
from lorakit.plugins.lorabert.experiment import predict_probs, split_items
from lorakit.plugins.lorabert.module import LoRABertModule


def items(n, seed):
    records, labels = synthetic_transcripts(n, n, seed=seed)
    return [Transcript(r.id, r.seq, y) for r, y in zip(records, labels)]


def fit(module, train, steps, root, batch_size=8):
    loader = torch.utils.data.DataLoader(TranscriptDataset(train), batch_size=batch_size,
                                         shuffle=True, collate_fn=collate)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, gradient_clip_val=1.0,
                         default_root_dir=str(root))
    trainer.fit(module, loader)
    return trainer


def test_lora_trains_query_value_adapters_and_the_head_only():
    m = LoRABertModule()
    layers = m.adapters.layers
    assert sorted({p.rsplit(".", 1)[-1] for p in layers}) == ["query", "value"]
    assert len(layers) == 2 * m.model.config.num_hidden_layers
    assert list(m.adapters.saved) == ["classifier"]
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert all("lora_" in n or ".classifier." in n for n in trainable)
    full = LoRABertModule(mode="full")
    n_lora = sum(p.numel() for p in m.trainable_parameters())
    n_full = sum(p.numel() for p in full.trainable_parameters())
    assert n_full == sum(p.numel() for p in full.parameters())
    assert n_lora <= 0.05 * n_full


def test_head_mode_freezes_the_encoder():
    m = LoRABertModule(mode="head")
    assert m.adapters is None
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("model.classifier.") for n in trainable)


def test_the_head_has_one_hidden_layer_unless_head_hidden_is_zero():
    deep = LoRABertModule(head_hidden=16).model.classifier
    linears = [m for m in deep if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(257, 16), (16, 2)]
    assert any(isinstance(m, torch.nn.GELU) for m in deep)
    flat = LoRABertModule(head_hidden=0).model.classifier
    assert [(m.in_features, m.out_features) for m in flat
            if isinstance(m, torch.nn.Linear)] == [(257, 2)]
    with pytest.raises(LoraKitError, match="model.head_hidden"):
        LoRABertModule(head_hidden=-1)


def test_bad_options_and_folders_are_refused(tmp_path):
    with pytest.raises(LoraKitError, match="model.mode"):
        LoRABertModule(mode="qlora")
    with pytest.raises(LoraKitError, match="model.long_mode"):
        LoRABertModule(long_mode="truncate")
    with pytest.raises(CheckpointError, match="does not exist"):
        LoRABertModule(pretrained=str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="no config.json"):
        LoRABertModule(pretrained=str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="pytorch_model.bin, a pickle"):
        LoRABertModule(pretrained=str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"x")
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(CheckpointError, match="'gpt2' model"):
        LoRABertModule(pretrained=str(tmp_path))


def test_window_pooling_reads_the_whole_transcript_and_head_tail_does_not():
    torch.manual_seed(0)
    windows = LoRABertModule(long_mode="windows").eval()
    head_tail = LoRABertModule(long_mode="head_tail").eval()
    # same weights, so only the reading of the transcript differs
    head_tail.load_state_dict(windows.state_dict())
    rng = np.random.default_rng(0)
    seq = "".join(rng.choice(list("ACGT"), 4000))
    # 1,333 codons in frame 0, max_tokens a window
    assert windows.windows_along(windows.windows_of(seq)) == -(-1333 // windows.max_tokens) > 1
    assert head_tail.windows_along(head_tail.windows_of(seq)) == 1
    middle = seq[:2000] + ("C" if seq[2000] != "C" else "G") * 30 + seq[2030:]
    with torch.no_grad():
        w0, w1 = windows([seq])[0], windows([middle])[0]
        h0, h1 = head_tail([seq])[0], head_tail([middle])[0]
    assert not torch.allclose(w0, w1)       # a change in the middle is seen...
    assert torch.allclose(h0, h1)           # ...only when every window is read


@pytest.mark.parametrize("pooling", ["tokens", "mean", "max"])
def test_every_pooling_gives_one_logit_pair_per_transcript(pooling):
    m = LoRABertModule(pooling=pooling).eval()
    with torch.no_grad():
        logits, n = m(["ACGT" * 600, "ACG", "ATGGCC" * 20])
    assert logits.shape == (3, 2) and n == [-(-800 // m.max_tokens), 1, 1]  # 800 codons


def test_a_few_training_steps_on_synthetic_data_separate_the_classes(tmp_path):
    pl.seed_everything(0)
    train, test = items(50, seed=10), items(20, seed=11)
    # short windows, one per transcript in training, keep this fast
    m = LoRABertModule(lr=1e-2, max_tokens=96, max_train_windows=1)
    before = auroc([t.label for t in test], predict_probs(m, test))
    fit(m, train, steps=60, root=tmp_path)
    after = auroc([t.label for t in test], predict_probs(m, test))
    assert after > 0.65 and after > before + 0.05


def test_lora_bert_beats_chance_on_a_small_real_subset(tmp_path):
    try:
        splits = split_items("cpat_human", train_per_class=80)
    except Exception as err:  # no network and no cache
        pytest.skip(f"CPAT data unavailable: {err}")
    rng = np.random.default_rng(0)
    test = [splits["test"][i] for i in rng.permutation(len(splits["test"]))[:80]]
    pl.seed_everything(0)
    m = LoRABertModule(lr=1e-2, max_tokens=96, max_train_windows=1)
    fit(m, splits["train"], steps=60, root=tmp_path)
    score = auroc([t.label for t in test], predict_probs(m, test))
    assert score > 0.7


def test_fit_writes_an_adapter_file_that_reproduces_the_model(tmp_path):
    pl.seed_everything(0)
    m = LoRABertModule(lr=3e-3)
    loader = torch.utils.data.DataLoader(TranscriptDataset(items(4, seed=1)), batch_size=4,
                                         collate_fn=collate)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(m, loader)
    path = tmp_path / "adapter.safetensors"
    assert path.is_file()
    again = LoRABertModule(adapter_file=str(path))
    test = items(3, seed=2)
    assert np.allclose(predict_probs(m, test), predict_probs(again, test), atol=1e-6)
    with pytest.raises(LoraKitError, match="adapter_file needs model.mode 'lora'"):
        LoRABertModule(adapter_file=str(path), mode="full")
    # the file says which head it holds, so a module asked for another width follows it
    other_width = LoRABertModule(adapter_file=str(path), head_hidden=8)
    assert other_width.hparams.head_hidden == 32
    assert np.allclose(predict_probs(m, test), predict_probs(other_width, test), atol=1e-6)


def codon_base(folder, frames=3):
    """A tiny random BERT over codons (k=3, stride 3) whose tokenizer reads `frames`."""
    from transformers import BertForMaskedLM

    from lorakit.domains.genomics.kmer import KmerTokenizer
    from lorakit.domains.genomics.kmer_bert import small_bert_config
    torch.manual_seed(0)
    tok = KmerTokenizer(3, 3, frames=frames)
    config = small_bert_config(len(tok), hidden=32, layers=1, heads=2, max_positions=98)
    BertForMaskedLM(config).save_pretrained(str(folder), safe_serialization=True)
    tok.save(folder)
    return str(folder)


def test_a_codon_base_reads_every_window_in_all_three_frames(tmp_path):
    m = LoRABertModule(pretrained=codon_base(tmp_path)).eval()
    assert (m.tokenizer.frames, m.max_tokens) == (3, 96)
    seq = "".join(np.random.default_rng(0).choice(list("ACGT"), 1000))
    wins = m.windows_of(seq)
    # 1000 nt = 333 codons a frame = 4 windows of 96, each in frames 0, 1, 2
    assert [(w.group, w.frame) for w in wins] == [(g, f) for g in range(4) for f in range(3)]
    assert [w.ids for w in wins if w.frame == 1] == [
        w.ids for w in m.tokenizer.windows(seq[1:], 96)]
    assert m.windows_along(wins) == 4
    one = LoRABertModule(pretrained=str(tmp_path), frames=1)
    assert [w.ids for w in one.windows_of(seq)] == [w.ids for w in wins if w.frame == 0]
    head_tail = LoRABertModule(pretrained=str(tmp_path), long_mode="head_tail")
    assert [w.frame for w in head_tail.windows_of(seq)] == [0, 1, 2]
    with torch.no_grad():
        logits, n = m([seq, "ACG", "AC"])
    assert logits.shape == (3, 2) and n == [4, 1, 1]


def test_training_keeps_every_frame_of_the_windows_it_samples(tmp_path):
    m = LoRABertModule(pretrained=codon_base(tmp_path), max_train_windows=2)
    seq = "ACGTTGCA" * 250  # 2000 nt: 7 windows of 96 codons in each frame
    torch.manual_seed(0)
    kept = m._train_subset(m.windows_of(seq))
    groups = sorted({w.group for w in kept})
    assert len(groups) == 2 and groups[1] - groups[0] in (3, 4)  # evenly spaced
    assert sorted((w.group, w.frame) for w in kept) == [(g, f) for g in groups
                                                        for f in range(3)]


def test_one_frame_tokenizers_read_transcripts_as_before():
    m = LoRABertModule(frames=1)  # the embedded codon base, read in frame 0 only
    assert m.tokenizer.frames == 1
    seq = "".join(np.random.default_rng(1).choice(list("ACGT"), 4000))
    wins = m.windows_of(seq)
    plain = m.tokenizer.windows(seq, m.max_tokens)
    assert [(w.ids, w.start, w.end) for w in wins] == [(w.ids, w.start, w.end) for w in plain]
    assert m.windows_along(wins) == len(plain)


def test_with_several_frames_the_mean_feature_is_the_largest_per_frame_mean():
    from lorakit.domains.genomics.kmer_bert import KmerBertClassifier
    pool = KmerBertClassifier.pool_windows
    # three windows of 2 features: frame 0 (two windows) and frame 1 (one window)
    total = torch.tensor([[2.0, 0.0], [4.0, 6.0], [0.0, 12.0]])
    count = torch.tensor([[2.0], [2.0], [4.0]])
    peak = torch.tensor([[1.0, 5.0], [3.0, 4.0], [0.0, 9.0]])
    mixed = pool(total, peak, count, 100)
    assert torch.allclose(mixed[:2], torch.tensor([6.0 / 8, 18.0 / 8]))
    per_frame = pool(total, peak, count, 100, frames=torch.tensor([0, 0, 1]))
    # frame 0 means (1.5, 1.5), frame 1 means (0, 3): feature by feature the larger
    assert torch.allclose(per_frame[:2], torch.tensor([1.5, 3.0]))
    assert torch.allclose(per_frame[2:], mixed[2:])  # max and length are frame-blind
    assert torch.allclose(pool(total, peak, count, 100, frames=torch.tensor([0, 0, 0])), mixed)
