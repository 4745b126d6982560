"""The adapter file: metadata, refusing another base, corrupt files, atomic writes."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import lorakit
from lorakit.config import ALLoRAOptions


@pytest.fixture
def saved(tiny_bert, tmp_path):
    adapters = lorakit.attach(tiny_bert(), lorakit.LoRAConfig(rank=4, alpha=8,
                                                              targets=["*.query", "*.value"]))
    path = tmp_path / "a.safetensors"
    adapters.save(path, metadata={"base": "tiny-bert"})
    return path


def test_header_metadata_names_method_rank_alpha_targets_version_and_base(saved):
    with safe_open(str(saved), framework="pt") as f:
        meta = json.loads(f.metadata()["lorakit"])
    assert meta["config"]["method"] == "lora"
    assert meta["config"]["rank"] == 4 and meta["config"]["alpha"] == 8
    assert meta["config"]["targets"] == ["*.query", "*.value"]
    assert meta["version"] == lorakit.__version__
    assert meta["fingerprint"]["bert.encoder.layer.1.attention.self.value"] == [32, 32]
    assert len(meta["fingerprint_sha256"]) == 16
    assert meta["extra"] == {"base": "tiny-bert"}


def test_loading_onto_another_base_names_the_first_mismatching_module(saved, tiny_bert):
    with pytest.raises(lorakit.AdapterMismatchError) as err:
        lorakit.load_adapter(tiny_bert(hidden=64), saved)
    msg = str(err.value)
    assert "bert.encoder.layer.0.attention.self.query" in msg
    assert "Linear(in=32, out=32) there but Linear(in=64, out=64)" in msg


def test_loading_onto_a_shallower_base_names_the_missing_module(saved, tiny_bert):
    with pytest.raises(lorakit.AdapterMismatchError, match="layer.1.attention.self.query.*does not"):
        lorakit.load_adapter(tiny_bert(layers=1), saved)


def test_a_refused_load_leaves_the_model_untouched(saved, tiny_bert):
    model = tiny_bert(hidden=64)
    with pytest.raises(lorakit.AdapterMismatchError):
        lorakit.load_adapter(model, saved)
    assert lorakit.adapters_of(model) is None
    assert not any(isinstance(m, lorakit.LoRALayer) for m in model.modules())


@pytest.mark.parametrize("keep", [0, 7, 100, -50])
def test_truncated_file_gets_a_clear_error(saved, tiny_bert, keep):
    data = saved.read_bytes()
    saved.write_bytes(data[:keep])
    with pytest.raises(lorakit.AdapterFileError, match="truncated or corrupt"):
        lorakit.load_adapter(tiny_bert(), saved)


def test_safetensors_without_lorakit_metadata_points_to_import_peft(tmp_path, tiny_bert):
    path = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(lorakit.AdapterFileError, match="import_peft"):
        lorakit.load_adapter(tiny_bert(), path)


def test_edited_fingerprint_is_detected(saved, tmp_path, tiny_bert):
    with safe_open(str(saved), framework="pt") as f:
        meta = json.loads(f.metadata()["lorakit"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["fingerprint"]["bert.encoder.layer.0.attention.self.query"] = [32, 31]
    save_file(tensors, str(saved), metadata={"lorakit": json.dumps(meta)})
    with pytest.raises(lorakit.AdapterFileError, match="checksum"):
        lorakit.read_adapter(saved)


def test_missing_file_is_named(tmp_path, tiny_bert):
    with pytest.raises(lorakit.AdapterFileError, match="nope.safetensors does not exist"):
        lorakit.load_adapter(tiny_bert(), tmp_path / "nope.safetensors")


def test_a_crash_while_saving_leaves_no_partial_file_and_keeps_the_old_one(saved, tiny_bert,
                                                                          monkeypatch):
    old = saved.read_bytes()
    adapters = lorakit.attach(tiny_bert(seed=3), lorakit.LoRAConfig(targets=["*.query"]))

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr("lorakit.io.adapter_file.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        adapters.save(saved)
    assert saved.read_bytes() == old
    assert [p.name for p in saved.parent.iterdir()] == ["a.safetensors"]


def test_nothing_is_unpickled_when_loading(saved, tiny_bert, monkeypatch):
    import pickle

    def no_pickle(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    lorakit.load_adapter(tiny_bert(), saved)


def rewrite_meta(path, edit):
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["lorakit"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(meta)
    save_file(tensors, str(path), metadata={"lorakit": json.dumps(meta)})


def test_a_newer_format_is_refused_naming_both_versions(saved, tiny_bert):
    rewrite_meta(saved, lambda m: m.update(format=99, version="9.0.0"))
    with pytest.raises(lorakit.AdapterFileError,
                       match=r"adapter format 99, written by lorakit 9\.0\.0; this lorakit "
                             r"\S+ reads formats up to 2"):
        lorakit.load_adapter(tiny_bert(), saved)


def test_an_unknown_config_key_is_refused_by_name(saved, tiny_bert):
    rewrite_meta(saved, lambda m: m["config"].update(lora_shift=0.5))
    with pytest.raises(lorakit.AdapterFileError, match="unknown adapter config key 'lora_shift'"):
        lorakit.load_adapter(tiny_bert(), saved)


def test_a_format_1_file_of_lorakit_0_1_still_loads_as_linear_modules(saved, tiny_bert):
    adapted = tiny_bert()
    lorakit.load_adapter(adapted, saved)
    ids = torch.randint(0, 60, (2, 7))

    def to_format_1(meta):
        meta["format"] = 1
        del meta["kinds"], meta["name"]
    rewrite_meta(saved, to_format_1)
    meta, _ = lorakit.read_adapter(saved)
    assert meta["name"] == "default" and set(meta["kinds"].values()) == {"linear"}
    old = tiny_bert()
    lorakit.load_adapter(old, saved)
    assert torch.equal(old(input_ids=ids).logits, adapted(input_ids=ids).logits)


def test_a_file_missing_a_module_tensor_names_it(saved, tiny_bert):
    with safe_open(str(saved), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()
                   if k != "bert.encoder.layer.1.attention.self.value.lora_B"}
    save_file(tensors, str(saved), metadata=meta)
    with pytest.raises(lorakit.AdapterFileError,
                       match="lacks tensor 'bert.encoder.layer.1.attention.self.value.lora_B'"):
        lorakit.load_adapter(tiny_bert(), saved)


def test_every_method_in_the_config_has_one_variant_class():
    from typing import get_args

    from lorakit.config import Method
    assert set(get_args(Method)) == set(lorakit.VARIANTS)
    for name, cls in lorakit.VARIANTS.items():
        assert cls.method == name and issubclass(cls, lorakit.Variant)


def test_a_plain_lora_file_holds_only_the_settings_every_adapter_has(saved):
    """A method's own options are written only when set, so a plain LoRA file stays
    readable by a lorakit that predates them."""
    from lorakit.config import CORE_FIELDS
    meta, _ = lorakit.read_adapter(saved)
    assert set(meta["config"]) == set(CORE_FIELDS)
    cfg = lorakit.LoRAConfig(method="allora", allora=ALLoRAOptions(eta=2.0))
    assert cfg.to_dict()["allora_eta"] == 2.0
    assert lorakit.LoRAConfig.from_dict(cfg.to_dict()) == cfg
