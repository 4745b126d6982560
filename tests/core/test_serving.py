"""The adapter pool and batched generation, on a tiny random LlamaForCausalLM."""
from __future__ import annotations

import copy
import os
import time

import pytest
import torch

import lorakit
from lorakit.serving import (
    AdapterPool,
    AdapterUnavailableError,
    Engine,
    PoolBusy,
    Request,
    UnknownAdapterError,
    generate,
)

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)


def tiny_llama(seed: int = 0, hidden: int = 32) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        initializer_range=0.2, eos_token_id=None, bos_token_id=None, pad_token_id=0)
    return transformers.LlamaForCausalLM(config).eval()


def write_adapter(base, path, rank, targets=("q_proj", "v_proj"), seed=0, std=0.5):
    model = copy.deepcopy(base)
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=rank, alpha=2.0 * rank,
                                                        targets=list(targets)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapters.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    adapters.save(path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapters")
    base = tiny_llama()
    write_adapter(base, folder / "a.safetensors", 2, seed=1)
    write_adapter(base, folder / "b.safetensors", 8, ("q_proj", "o_proj"), seed=2)
    write_adapter(base, folder / "c.safetensors", 4, ("v_proj", "down_proj"), seed=3)
    write_adapter(tiny_llama(hidden=48), folder / "other.safetensors", 4, seed=4)
    return base, folder


def alone(base, folder, prompt, adapter, n):
    """The reference: HF generate on a copy of the base with only that adapter active."""
    model = copy.deepcopy(base)
    if adapter:
        lorakit.load_adapter(model, folder / f"{adapter}.safetensors")
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                         do_sample=False)
    return out[0, len(prompt):].tolist()


PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [20, 21, 22, 23], list(range(40, 52)), [9, 9, 1],
           [17]]
ADAPTERS = ["a", None, "b", "c", "a", "b"]


def test_mixed_batch_greedy_equals_each_request_alone_with_its_adapter(setup):
    base, folder = setup
    model = copy.deepcopy(base)
    pool = AdapterPool(model, folder)
    requests = [Request(p, a, max_new_tokens=5) for p, a in zip(PROMPTS, ADAPTERS)]
    out = generate(model, pool, requests, max_batch=4)    # 6 requests: two join mid-run
    refs = [alone(base, folder, p, a, 5) for p, a in zip(PROMPTS, ADAPTERS)]
    assert [c.tokens for c in out] == refs
    # the adapters matter: the same prompt under another adapter gives other tokens
    assert alone(base, folder, PROMPTS[0], None, 5) != refs[0]
    assert pool.status("a") == "resident"


def test_adapter_for_another_base_is_refused_by_name_and_the_others_keep_serving(setup):
    base, folder = setup
    model = copy.deepcopy(base)
    pool = AdapterPool(model, folder)
    assert pool.status("other").startswith("refused") and "another base" in pool.status("other")
    out = generate(model, pool, [Request([5, 6], "other", max_new_tokens=2),
                                 Request([5, 6], "a", max_new_tokens=2),
                                 Request([5, 6], "nobody", max_new_tokens=2)])
    assert out[0].finish_reason == "error" and "other" in out[0].error
    assert out[0].error_type == "AdapterUnavailableError"
    assert out[1].tokens == alone(base, folder, [5, 6], "a", 2)
    assert out[2].error_type == "UnknownAdapterError"
    with pytest.raises(UnknownAdapterError):
        pool.acquire("nobody")


def slot_bytes(base, folder) -> int:
    """Bytes of one slot of a pool over `folder` (the stacks hold slots + 1 rows)."""
    probe = AdapterPool(copy.deepcopy(base), folder)
    return probe.resident_bytes // (probe.slots + 1)


def test_lru_eviction_never_evicts_a_pinned_adapter(setup):
    base, folder = setup
    model = copy.deepcopy(base)
    per_slot = slot_bytes(base, folder)
    pool = AdapterPool(model, folder, max_resident_bytes=2 * per_slot)
    assert pool.slots == 2 and pool.resident_bytes <= 3 * per_slot
    sa = pool.acquire("a")                       # pinned
    sb = pool.acquire("b")
    pool.release(sb)
    sc = pool.acquire("c")                       # evicts b (unpinned), not a (pinned)
    assert sc == sb and pool.status("b") == "idle" and pool.status("a") == "resident"
    with pytest.raises(PoolBusy):
        pool.acquire("b")                        # a and c are both held
    pool.release(sa)
    pool.release(sc)
    pool.acquire("a")
    pool.release(sa)
    assert pool.acquire("b") == sc               # c was used less recently than a
    assert pool.loads == 4


def test_generate_under_a_small_resident_cap_waits_for_slots_and_matches(setup):
    base, folder = setup
    model = copy.deepcopy(base)
    pool = AdapterPool(model, folder, max_resident_bytes=slot_bytes(base, folder))
    assert pool.slots == 1
    out = generate(model, pool, [Request(p, a, max_new_tokens=3)
                                 for p, a in zip(PROMPTS, ADAPTERS)], max_batch=4)
    assert [c.tokens for c in out] == [alone(base, folder, p, a, 3)
                                       for p, a in zip(PROMPTS, ADAPTERS)]
    assert pool.loads >= 4                       # a, b, c, a again or more: evictions happened


def test_hot_swap_new_requests_get_the_new_file_running_ones_keep_the_old(setup, tmp_path):
    base, folder = setup
    path = write_adapter(base, tmp_path / "x.safetensors", 4, seed=10)
    model = copy.deepcopy(base)
    pool = AdapterPool(model, tmp_path)
    engine = Engine(model, pool, max_batch=4)
    engine.submit(Request([5, 6, 7], "x", max_new_tokens=6))
    engine.step()                                # running on the old weights
    old_ref = alone(base, tmp_path, [5, 6, 7], "x", 6)
    write_adapter(base, tmp_path / "new.tmp", 4, seed=11)
    os.replace(tmp_path / "new.tmp", path)       # an atomic replace, as `save` does
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    engine.submit(Request([5, 6, 7], "x", max_new_tokens=6))
    done = dict(engine.run())
    assert done[0].tokens == old_ref
    assert done[1].tokens == alone(base, tmp_path, [5, 6, 7], "x", 6) != old_ref
    assert pool.slots >= 1 and pool.status("x") == "resident"


def test_peft_folders_serve_like_the_lorakit_files_they_came_from(setup, tmp_path):
    base, folder = setup
    lorakit.export_peft(folder / "b.safetensors", tmp_path / "b_peft")
    model = copy.deepcopy(base)
    pool = AdapterPool(model, {"b_peft": tmp_path / "b_peft", "b": folder / "b.safetensors"})
    out = generate(model, pool, [Request([3, 4, 5], "b_peft", max_new_tokens=4),
                                 Request([3, 4, 5], "b", max_new_tokens=4)])
    assert out[0].tokens == out[1].tokens == alone(base, folder, [3, 4, 5], "b", 4)


def test_unreadable_file_is_refused_and_others_serve(setup, tmp_path):
    base, folder = setup
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    write_adapter(base, tmp_path / "a.safetensors", 2, seed=1)
    model = copy.deepcopy(base)
    pool = AdapterPool(model, tmp_path)
    with pytest.raises(AdapterUnavailableError, match="broken"):
        pool.acquire("broken")
    assert generate(model, pool, [Request([1, 2], "a", max_new_tokens=2)])[0].error is None


def test_sampling_is_per_request_and_does_not_depend_on_the_batch(setup):
    base, folder = setup
    model = copy.deepcopy(base)
    pool = AdapterPool(model, folder)
    req = Request([5, 6, 7], "a", max_new_tokens=6, temperature=0.9, top_p=0.8, seed=7)
    alone_out = generate(model, pool, [req])[0].tokens
    mixed = generate(model, pool, [Request(p, a, max_new_tokens=4) for p, a in
                                   zip(PROMPTS, ADAPTERS)] + [req], max_batch=8)
    assert mixed[-1].tokens == alone_out
    other_seed = generate(model, pool, [Request([5, 6, 7], "a", max_new_tokens=6,
                                                temperature=0.9, top_p=0.8, seed=8)])
    assert other_seed[0].tokens != alone_out


def test_continuous_batching_joins_between_steps_and_finished_rows_leave(setup):
    base, folder = setup
    model = copy.deepcopy(base)
    pool = AdapterPool(model, folder)
    engine = Engine(model, pool, max_batch=4)
    engine.submit(Request(PROMPTS[0], "a", max_new_tokens=3))
    engine.submit(Request(PROMPTS[3], "c", max_new_tokens=8))
    engine.step()                                  # prefill + one decode: 2 tokens each
    assert len(engine.rows) == 2
    done = engine.step()                           # the 3-token request leaves
    assert [t for t, _ in done] == [0] and len(engine.rows) == 1
    engine.submit(Request(PROMPTS[1], None, max_new_tokens=3))   # joins the running batch
    engine.step()
    assert len(engine.rows) == 2
    results = dict(done + engine.run())
    assert results[1].tokens == alone(base, folder, PROMPTS[3], "c", 8)
    assert results[2].tokens == alone(base, folder, PROMPTS[1], None, 3)


def test_over_long_prompt_and_eos_stop(setup):
    base, folder = setup
    model = copy.deepcopy(base)
    pool = AdapterPool(model, folder)
    out = generate(model, pool, [Request(list(range(1, 61)), "a", max_new_tokens=8)])
    assert out[0].error_type == "PromptTooLongError"
    first = alone(base, folder, [5, 6, 7], "a", 1)[0]
    out = generate(model, pool, [Request([5, 6, 7], "a", max_new_tokens=8)],
                   eos_token_id=first)
    assert out[0].tokens == [first] and out[0].finish_reason == "stop"


def test_newcomers_are_gathered_for_one_prefill_but_never_held_past_max_wait(setup):
    base, folder = setup
    model = copy.deepcopy(base)
    pool = AdapterPool(model, folder)
    engine = Engine(model, pool, max_batch=8, max_wait_steps=2)     # min_admit = 2
    engine.submit(Request(PROMPTS[3], "c", max_new_tokens=12))
    engine.step()                                   # an idle batch admits at once
    engine.submit(Request(PROMPTS[0], "a", max_new_tokens=3))
    engine.step()
    assert len(engine.rows) == 1                    # one newcomer waits for company
    engine.submit(Request(PROMPTS[1], "b", max_new_tokens=3))
    engine.step()
    assert len(engine.rows) == 3                    # two: prefilled together
    engine.submit(Request(PROMPTS[2], None, max_new_tokens=3))
    engine.step()
    engine.step()
    assert len(engine.waiting) == 1
    engine.step()                                   # held max_wait_steps: admitted alone
    assert not engine.waiting
    done = dict(engine.run())
    assert done[3].tokens == alone(base, folder, PROMPTS[2], None, 3)


def test_abort_fails_the_running_requests_and_frees_their_slots(setup):
    base, folder = setup
    model = copy.deepcopy(base)
    pool = AdapterPool(model, folder, max_resident_bytes=slot_bytes(base, folder))
    engine = Engine(model, pool, max_batch=4)
    engine.submit(Request([5, 6], "a", max_new_tokens=8))
    engine.step()
    failed = engine.abort("internal error: boom")
    assert [c.finish_reason for _, c in failed] == ["error"] and not engine.busy
    assert pool.acquire("b") == 0                    # the one slot is free again


def test_a_missing_adapter_folder_is_an_error_not_an_empty_pool(setup, tmp_path):
    base, _ = setup
    with pytest.raises(lorakit.AdapterFileError, match="does not exist"):
        AdapterPool(copy.deepcopy(base), tmp_path / "typo")


def test_the_pool_wraps_modules_without_a_handle_and_close_gives_the_base_back(setup):
    base, folder = setup
    model = copy.deepcopy(base)
    pool = AdapterPool(model, folder)
    generate(model, pool, [Request(PROMPTS[0], "a", max_new_tokens=2)])
    layers = [m for m in model.modules() if isinstance(m, lorakit.LoRALayer)]
    # every module some servable adapter adapts, wrapped bare: no adapter of the pool's own
    assert {p for p, m in model.named_modules() if isinstance(m, lorakit.LoRALayer)} == {
        f"model.layers.{i}.{m}" for i in range(2)
        for m in ("self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj")}
    assert all(len(layer.variants) == 0 for layer in layers)
    assert lorakit.adapters_of(model) is None
    with pytest.raises(lorakit.LoraKitError, match="without lorakit adapters"):
        AdapterPool(model, folder)
    pool.close()
    assert not any(isinstance(m, lorakit.LoRALayer) for m in model.modules())
    assert dict(model.named_parameters()).keys() == dict(base.named_parameters()).keys()
