"""`LoRAConfig`: the method names come from the registry, each method's options are one
dataclass in the field named after it, the flat keys of earlier versions are still read
(with a DeprecationWarning naming the new key) and are what files hold, and jsonargparse
(LightningCLI) takes the nested options with a help string for every field."""
import dataclasses
import typing
import warnings

import pytest
from jsonargparse import ArgumentParser

import lorakit
from lorakit.config import FLAT, GROUPS, LoRAConfig, MixtureOptions


def changed(group: str, name: str):
    """A valid value of option `group.name` other than its default."""
    cls = GROUPS[group]
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    default = getattr(cls(), name)
    kind = typing.get_type_hints(cls)[name]
    if typing.get_origin(kind) is typing.Literal:
        return next(v for v in typing.get_args(kind) if v != default)
    special = {"expert_method": "dora", "expert_schedule": "2,4", "experts_per_layer": [2],
               "lbc_delta": 0.2, "group_size": 32}
    if name in special:
        return special[name]
    assert f.type in ("int", "float"), (group, name, f.type)
    return default + 1 if isinstance(default, int) else (default * 2 or 0.5)


def test_the_method_choices_are_the_registry():
    method = typing.get_type_hints(LoRAConfig)["method"]
    assert typing.get_args(method) == tuple(lorakit.VARIANTS)
    with pytest.raises(lorakit.LoraKitError, match="method must be one of .*'mixture'"):
        LoRAConfig(method="nope")


def test_every_method_has_a_summary_in_the_methods_help():
    help_ = LoRAConfig.__dataclass_fields__["method"].metadata["help"]
    for name, cls in lorakit.VARIANTS.items():
        assert cls.summary, name
        assert f"'{name}': {cls.summary}" in help_


def test_a_method_reads_its_options_from_its_group():
    config = LoRAConfig(method="mixture", mixture=MixtureOptions(n_experts=4, top_k=1),
                        targets=["0", "2"])
    import torch
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    adapters = lorakit.attach(model, config)
    assert {v.n_experts for v in adapters.variants().values()} == {4}
    assert {v.top_k for v in adapters.variants().values()} == {1}


@pytest.mark.parametrize("key", FLAT)
def test_a_flat_key_is_still_read_with_a_warning_naming_its_new_place(key):
    group, name = FLAT[key]
    value = changed(group, name)
    with pytest.warns(DeprecationWarning, match=rf"LoRAConfig\({key}=...\) is deprecated: "
                                                rf"use LoRAConfig\({group}=.*\({name}=...\)\), "
                                                rf"or the key {group}\.{name}"):
        config = LoRAConfig(method="mixture" if group == "mixture" else "lora", **{key: value})
    assert getattr(getattr(config, group), name) == value
    assert getattr(config, key) == value          # the old attribute reads the group


@pytest.mark.parametrize("key", FLAT)
def test_files_keep_the_flat_keys_and_read_back_without_a_warning(key):
    group, name = FLAT[key]
    value = changed(group, name)
    config = LoRAConfig(**{group: dataclasses.replace(GROUPS[group](), **{name: value})})
    data = config.to_dict()
    assert data[key] == value and group not in data      # what earlier lorakits read
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert LoRAConfig.from_dict(data) == config
    grouped = {**{k: v for k, v in data.items() if k != key}, group: {name: value}}
    assert LoRAConfig.from_dict(grouped) == config


def test_a_flat_key_and_its_group_merge_and_the_group_is_not_changed_in_place():
    options = MixtureOptions(n_experts=4)
    with pytest.warns(DeprecationWarning):
        config = LoRAConfig(method="mixture", mixture=options, top_k=1)
    assert (config.mixture.n_experts, config.mixture.top_k) == (4, 1)
    assert options.top_k == 2


def test_group_options_are_checked():
    with pytest.raises(lorakit.LoraKitError, match="mixture.router must be one of"):
        MixtureOptions(router="sparse")
    with pytest.raises(lorakit.LoraKitError, match="top_k=3 exceeds n_experts=2"):
        LoRAConfig(method="mixture", mixture=MixtureOptions(n_experts=2, top_k=3))
    with pytest.raises(lorakit.LoraKitError, match="allora.eta must be > 0"):
        LoRAConfig(allora={"eta": 0})


def parser():
    p = ArgumentParser(exit_on_error=False)
    p.add_class_arguments(LoRAConfig, "adapter")
    return p


def test_jsonargparse_takes_the_nested_options_on_the_command_line_and_in_yaml():
    p = parser()
    cli = p.instantiate(p.parse_args(["--adapter.method", "mixture",
                                      "--adapter.mixture.n_experts", "4",
                                      "--adapter.allora.eta", "0.5"])).adapter
    assert cli == LoRAConfig(method="mixture", mixture=MixtureOptions(n_experts=4),
                             allora={"eta": 0.5})
    yaml = "adapter:\n  method: mixture\n  rank: 4\n  mixture:\n    n_experts: 4\n    top_k: 1\n"
    from_yaml = p.instantiate(p.parse_string(yaml)).adapter
    assert from_yaml == LoRAConfig(method="mixture", rank=4,
                                   mixture=MixtureOptions(n_experts=4, top_k=1))
    with pytest.raises(Exception, match="nope"):
        p.parse_args(["--adapter.method", "nope"])


def test_an_old_yaml_block_with_flat_keys_is_upgraded_with_a_warning_per_key():
    import yaml

    from lorakit.config import upgrade_flat_keys
    old = yaml.safe_load("method: mixture\nrank: 4\nn_experts: 4\ntop_k: 1\nallora_eta: 0.5\n")
    with pytest.warns(DeprecationWarning) as caught:
        block = upgrade_flat_keys(old, source="fit.yaml")
    assert sorted(str(w.message).split(":")[1] for w in caught) == [
        " the key 'allora_eta' is deprecated", " the key 'n_experts' is deprecated",
        " the key 'top_k' is deprecated"]
    assert "use mixture.n_experts" in str(caught[0].message) + str(caught[1].message)
    p = parser()
    config = p.instantiate(p.parse_object({"adapter": block})).adapter
    assert config == LoRAConfig(method="mixture", rank=4,
                                mixture=MixtureOptions(n_experts=4, top_k=1), allora={"eta": 0.5})


def test_every_option_on_the_command_line_has_a_help_string():
    p = parser()
    fields = {f"adapter.{f.name}" for f in dataclasses.fields(LoRAConfig)
              if f.name not in GROUPS}
    fields |= {f"adapter.{g}.{f.name}" for g, cls in GROUPS.items()
               for f in dataclasses.fields(cls)}
    helps = {a.dest: a.help for a in p._actions if a.dest in fields}
    assert set(helps) == fields
    missing = [dest for dest, h in helps.items() if not h or h.startswith("(type")]
    assert not missing, missing
