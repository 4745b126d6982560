"""PEFT interop against the real `peft` package: same logits both ways."""
import json

import pytest
import torch

import lorakit

peft = pytest.importorskip("peft")



@pytest.mark.parametrize("method", ["lora", "s2lora"])
def test_lorakit_adapter_exported_loads_in_peft_with_the_same_logits(randomise, tiny_bert,
                                                                   tmp_path, method):
    ids = torch.randint(0, 60, (3, 12))
    model = tiny_bert()
    adapters = lorakit.attach(model, lorakit.LoRAConfig(
        rank=4, alpha=8, rslora=method == "s2lora", method=method,
        targets=["*.query", "*.value"], modules_to_save=["classifier"]))
    randomise(adapters.parameters())
    ours = model(input_ids=ids).logits
    adapters.save(tmp_path / "a.safetensors")
    out = lorakit.export_peft(tmp_path / "a.safetensors", tmp_path / "peft")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4
    peft_model = peft.PeftModel.from_pretrained(tiny_bert(), str(out)).eval()
    theirs = peft_model(input_ids=ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_peft_trained_adapter_imports_into_lorakit_with_the_same_logits(tiny_bert, tmp_path):
    ids = torch.randint(0, 60, (3, 12))
    peft_model = peft.get_peft_model(tiny_bert(), peft.LoraConfig(
        r=4, lora_alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"]))
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    labels = torch.tensor([0, 1, 1])
    for _ in range(5):  # a real, if short, PEFT training run
        peft_model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    peft_model.eval()
    theirs = peft_model(input_ids=ids).logits
    peft_model.save_pretrained(str(tmp_path / "peft"))
    model = tiny_bert()
    adapters = lorakit.import_peft(tmp_path / "peft", model)
    assert len(adapters.layers) == 4
    assert (model(input_ids=ids).logits - theirs).abs().max().item() <= 1e-5


def test_import_refuses_pickled_peft_weights(tmp_path, tiny_bert):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2,
                                                              "lora_alpha": 2}))
    (tmp_path / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(lorakit.AdapterFileError, match="never loads"):
        lorakit.import_peft(tmp_path, tiny_bert())


def test_import_onto_the_wrong_base_names_the_module(tmp_path, tiny_bert):
    peft.get_peft_model(tiny_bert(), peft.LoraConfig(r=2, target_modules=["query"])) \
        .save_pretrained(str(tmp_path))
    with pytest.raises(lorakit.AdapterMismatchError, match="layer.0.attention.self.query"):
        lorakit.import_peft(tmp_path, tiny_bert(hidden=16))


def test_a_pruned_s2lora_adapter_exports_with_a_rank_pattern_peft_honours(randomise, tiny_bert,
                                                                        tmp_path):
    ids = torch.randint(0, 60, (3, 12))
    model = tiny_bert()
    targets = ["*.query", "*.value", "*.intermediate.dense"]   # bases 32x32 and 32x64
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=6, alpha=12, method="s2lora",
                                                        targets=targets))
    randomise(adapters.parameters())
    with torch.no_grad():
        for path, v in adapters.variants().items():
            keep = 2 if "intermediate" in path else 4      # ranks in use per basis
            v.lora_lambda[keep:] = 0.0
    assert adapters.prune() == {"shared.32x32": 4, "shared.32x64": 2}
    ours = model(input_ids=ids).logits
    adapters.save(tmp_path / "a.safetensors")
    out = lorakit.export_peft(tmp_path / "a.safetensors", tmp_path / "peft")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8.0          # scale 12/6 kept: alpha = 2·r
    assert cfg["rank_pattern"] == {f"bert.encoder.layer.{i}.intermediate.dense": 2
                                   for i in range(2)}
    assert set(cfg["alpha_pattern"].values()) == {4.0}
    peft_model = peft.PeftModel.from_pretrained(tiny_bert(), str(out)).eval()
    assert (ours - peft_model(input_ids=ids).logits).abs().max().item() <= 1e-5
