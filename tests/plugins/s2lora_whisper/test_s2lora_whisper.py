"""s2lora-whisper: S2-LoRA on real Whisper tiny.en weights, synthetic child speech, one thread.

One short fit (20 steps of 8 clips) is shared by the tests that need a trained adapter. It
starts from tiny.en itself cut to the 3 s context, not from the embedded base (tiny.en
after 100 adult steps, built on first use by the demo, the suite or a fit): building that
would add minutes to every fresh set-up. A fast test checks the base recipe's code path
with 2 steps; a slow one checks the real base.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lorakit import load_adapter
from lorakit.domains.speech.adult_base import BaseRecipe, base_path, build_base, embedded_base
from lorakit.domains.speech.metrics import error_rates
from lorakit.domains.speech.pretrained import tiny_en_checkpoint
from lorakit.domains.speech.synthetic import AdultSetConfig, CorpusConfig, build_corpus
from lorakit.domains.speech.whisper_model import load_whisper, transcribe
from lorakit.errors import CheckpointError, DataError
from lorakit.plugins.s2lora_whisper.data import SpeechDataModule
from lorakit.plugins.s2lora_whisper.module import ADAPTER, WhisperAdapterModule

CORPUS = CorpusConfig(train=160, val=8, test=24, train_speakers=8, test_speakers=2)


def trainer(tmp_path, steps: int = 20) -> pl.Trainer:
    return pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=tmp_path)


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(CORPUS)


@pytest.fixture(scope="module")
def fitted(corpus, tmp_path_factory):
    """S2-LoRA on tiny.en at 3 s after 20 steps on child_train, tested on child_test."""
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    out = tmp_path_factory.mktemp("fit")
    module = WhisperAdapterModule(checkpoint=str(tiny_en_checkpoint()), output_dir=str(out))
    data = SpeechDataModule(train_manifest=str(corpus / "child_train.jsonl"),
                            test_manifest=str(corpus / "child_test.jsonl"), batch_size=8)
    t = trainer(out)
    t.fit(module, data)
    t.test(module, data, verbose=False)
    return module, data, out


def test_s2lora_halves_child_wer_in_twenty_steps(fitted):
    module, _, out = fitted
    m = module.test_metrics["child_test"]
    print(f"child_test WER {m['base_wer']:.3f} -> {m['wer']:.3f}, "
          f"CER {m['base_cer']:.3f} -> {m['cer']:.3f}")
    assert m["wer"] < 0.5 * m["base_wer"]
    assert m["cer"] < 0.5 * m["base_cer"]
    saved = json.loads((out / "test_metrics.json").read_text())
    assert saved["child_test"]["wer"] == pytest.approx(m["wer"])
    assert saved["child_test"]["base_wer"] == pytest.approx(m["base_wer"])
    rows = [json.loads(line) for line in
            (out / "hypotheses" / "child_test.jsonl").read_text().splitlines()]
    assert len(rows) == m["n"] and set(rows[0]) == {"audio", "reference", "base", "adapted"}
    assert all(Path(r["audio"]).exists() for r in rows)
    assert error_rates([r["reference"] for r in rows],
                       [r["adapted"] for r in rows])["wer"] == pytest.approx(m["wer"])


def test_the_base_recipe_writes_a_whisper_checkpoint_with_its_recipe(tmp_path):
    recipe = BaseRecipe(steps=2, batch_size=4, adult_set=AdultSetConfig(clips=8, speakers=2))
    out = build_base(recipe, tmp_path / "base.pt", threads=1)
    assert list(tmp_path.iterdir()) == [out]          # no .partial left behind
    checkpoint = torch.load(out, map_location="cpu", weights_only=True)
    assert checkpoint["lorakit_recipe"]["steps"] == 2
    assert checkpoint["lorakit_recipe"]["source"] == "tiny.en.pt"
    assert load_whisper(str(out), n_audio_ctx=150).dims.n_audio_ctx == 150
    # the file name is keyed by the recipe: the embedded base's is another file
    assert base_path(recipe) != base_path(BaseRecipe())


@pytest.mark.slow
def test_embedded_base_is_tiny_en_taught_the_short_context_on_adults(corpus):
    module = WhisperAdapterModule(checkpoint=str(embedded_base(150)))
    checkpoint = torch.load(module.checkpoint, map_location="cpu", weights_only=True)
    recipe = checkpoint["lorakit_recipe"]
    assert recipe["source"] == "tiny.en.pt" and checkpoint["dims"]["n_audio_ctx"] == 150
    assert recipe["last_loss"] < 0.2 * recipe["first_loss"]
    adults = SpeechDataModule(test_manifest=str(corpus / "adult_test.jsonl"), max_seconds=3.0)
    adults.setup("test")
    batch = next(iter(adults.test_dataloader()))
    mel = module.mel(batch["audio"])
    with module.base_model() as base:
        taught = error_rates(batch["text"], transcribe(base, mel, module.max_tokens))["wer"]
    raw = load_whisper(tiny_en_checkpoint(), n_audio_ctx=150)
    untaught = error_rates(batch["text"], transcribe(raw, mel, module.max_tokens))["wer"]
    print(f"adult_test WER: tiny.en {untaught:.3f}, embedded base {taught:.3f}")
    assert taught < 0.15 and untaught > 0.5


def test_the_proximal_l1_step_leaves_exact_zeros_reported_in_sparsity_json(fitted):
    module, _, out = fitted
    rows = json.loads((out / "sparsity.json").read_text())
    zeros = sum(int((v.lora_lambda == 0).sum()) for v in module.adapters.variants().values())
    print(f"λ exactly zero: {zeros} of {8 * len(rows)}")
    assert sum(r["exact_zeros"] for r in rows) == zeros > 0


def test_trainable_count_is_shared_bases_plus_r_per_matrix(fitted):
    module, _, _ = fitted
    adapters, r = module.adapters, module.config.rank
    layers = adapters.layers.values()
    shapes = {(m.in_features, m.out_features) for m in layers}
    # tiny.en: 64 adapted matrices of three shapes: 384→384, 384→1536, 1536→384
    assert len(adapters.layers) == 64 and len(shapes) == 3
    expected = sum(r * (i + o) for i, o in shapes) + r * len(adapters.layers)
    assert adapters.trainable_count() == expected == 37_376
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == expected
    lora = sum(r * (m.in_features + m.out_features) for m in layers)
    assert expected <= 0.15 * lora


def test_merged_adapter_gives_the_same_transcripts(fitted, corpus):
    module, data, _ = fitted
    batch = next(iter(data.test_dataloader()))
    mel = module.mel(batch["audio"])
    before = transcribe(module.model, mel, module.max_tokens)
    module.adapters.merge()
    try:
        merged = transcribe(module.model, mel, module.max_tokens)
    finally:
        module.adapters.unmerge()
    assert merged == before
    with module.adapters.disabled():
        assert transcribe(module.model, mel, module.max_tokens) != before


def test_saved_adapter_reloads_onto_a_fresh_base(fitted):
    module, data, out = fitted
    path = out / "adapter.safetensors"
    assert path.stat().st_size < 200_000
    fresh = load_whisper(module.checkpoint, n_audio_ctx=150)
    load_adapter(fresh, path)
    mel = module.mel(next(iter(data.test_dataloader()))["audio"])
    assert transcribe(fresh, mel, 12) == transcribe(module.model, mel, 12)


def test_predict_writes_transcripts_as_jsonl(fitted, corpus, tmp_path):
    module, _, _ = fitted
    manifest = tmp_path / "clips.jsonl"
    clips = [json.loads(line) for line in (corpus / "child_test.jsonl").read_text().splitlines()]
    manifest.write_text("".join(json.dumps({"audio": str(corpus / c["audio"])}) + "\n"
                                for c in clips[:3]))
    module.output_dir = str(tmp_path)
    trainer(tmp_path).predict(module, SpeechDataModule(predict_manifest=str(manifest)))
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["audio"] for r in rows] == [str(corpus / c["audio"]) for c in clips[:3]]
    assert all(isinstance(r["text"], str) for r in rows)


def test_a_checkpoint_that_is_not_whisper_is_refused(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "lightning.ckpt")
    with pytest.raises(CheckpointError, match=r"lightning\.ckpt is not an openai-whisper "
                                              r"checkpoint"):
        WhisperAdapterModule(checkpoint=str(tmp_path / "lightning.ckpt"))


def test_an_unknown_value_of_the_deprecated_method_key_is_refused():
    with pytest.raises(Exception, match="method must be one of 's2lora', 'lora', 'bitfit', "
                                        "'full', got 'adalora'"):
        WhisperAdapterModule(method="adalora")


def test_bitfit_trains_the_biases_only_and_keeps_the_base_for_comparison():
    module = WhisperAdapterModule(checkpoint=str(tiny_en_checkpoint()), mode="bitfit")
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(".bias") for n in trainable)
    assert "encoder.blocks.0.attn.query.bias" in trainable
    assert "encoder.blocks.0.attn.query.weight" not in trainable
    with module.base_model() as base:
        assert base is not module.model and not any(p.requires_grad for p in base.parameters())


def test_too_long_clips_stop_the_run_with_their_count(corpus, tmp_path):
    data = SpeechDataModule(train_manifest=str(corpus / "child_train.jsonl"), max_seconds=0.5)
    with pytest.raises(DataError, match=r"clips in .*child_train\.jsonl are longer than the "
                                        r"0\.5 s encoder context .*--data\.too_long"):
        data.setup("fit")
    data = SpeechDataModule(train_manifest=str(corpus / "child_train.jsonl"), max_seconds=0.5,
                            too_long="truncate")
    data.setup("fit")
    assert all(len(item["audio"]) <= 8000 for item in data.datasets["train"][0])


def test_the_decoding_budget_follows_the_encoder_context():
    from lorakit.domains.speech.whisper_model import decoding_budget
    assert decoding_budget(150, 448) == 12          # the embedded 3 s base: the loop guard
    assert decoding_budget(1500, 448) == 120        # 30 s: several sentences
    assert decoding_budget(1500, 64) == 32          # never past Whisper's own limit


def test_a_30_second_context_run_transcribes_every_sentence_of_a_long_clip():
    """A user's own checkpoint at its full context is not cut at the short-context cap."""
    from lorakit.domains.speech.synthetic import Speaker, speak

    sentences = ["The weather was cold and grey this morning.",
                 "We walked to the station and waited for the train.",
                 "It arrived late, so we bought some coffee."]
    audio = speak(" ".join(sentences), Speaker("adult", "en-us", 50, 150, 1.0))
    assert 6 < len(audio) / 16000 < 30
    module = WhisperAdapterModule(checkpoint=str(tiny_en_checkpoint()), n_audio_ctx=None,
                                  adapter=replace(ADAPTER, method="lora"))
    assert module.n_audio_ctx == 1500 and module.max_tokens == 120
    mel = module.mel(torch.from_numpy(audio)[None])
    full = transcribe(module.model, mel, module.max_tokens)[0]
    capped = transcribe(module.model, mel, 12)[0]
    assert error_rates([" ".join(sentences)], [full])["wer"] < 0.25
    assert "coffee" in full.lower() and "coffee" not in capped.lower()
