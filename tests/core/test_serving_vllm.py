"""The vLLM hand-off: two lorakit adapters exported to PEFT's layout give, under vLLM with
`enable_lora`, the greedy tokens lorakit's own server gives on SmolLM2.

vLLM is not imported by lorakit: it runs from a tool environment of its own,
`<sys.prefix>/tools/vllm` (see the README's serving section for how it is built), as a
command. Without that environment the test is skipped.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .test_serving import write_adapter

VLLM_PYTHON = Path(sys.prefix) / "tools" / "vllm" / "bin" / "python"

SCRIPT = """
import json, sys
from vllm import LLM, SamplingParams
from vllm.lora.request import LoRARequest

def main():
    base, jobs, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    llm = LLM(model=base, enable_lora=True, max_lora_rank=8, max_loras=2, dtype="float32",
              max_model_len=256, enforce_eager=True)
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    tokens = []
    for i, (ids, folder) in enumerate(jobs):
        lora = LoRARequest(f"adapter{i}", i + 1, folder) if folder else None
        result = llm.generate({"prompt_token_ids": ids}, params, lora_request=lora)
        tokens.append(list(result[0].outputs[0].token_ids))
    json.dump(tokens, open(out, "w"))

if __name__ == "__main__":
    main()
"""


@pytest.mark.slow
@pytest.mark.skipif(not VLLM_PYTHON.is_file(), reason=f"no vLLM tool environment at "
                    f"{VLLM_PYTHON.parent.parent}")
def test_vllm_with_enable_lora_gives_lorakits_greedy_tokens_for_exported_adapters(tmp_path):
    import lorakit
    from lorakit.domains.text.smollm2 import smollm2, smollm2_dir
    from lorakit.serving import AdapterPool, Request, generate

    torch.set_num_threads(1)
    model, tokenizer = smollm2()
    prompts = ["The capital of France is", "Once upon a time, there was a"]
    for i in range(2):
        write_adapter(model, tmp_path / f"ad{i}.safetensors", 8, seed=i, std=0.05)
        lorakit.export_peft(tmp_path / f"ad{i}.safetensors", tmp_path / "peft" / f"ad{i}")
    pool = AdapterPool(model, tmp_path)
    requests = [Request(p, f"ad{i}", max_new_tokens=12, stop_at_eos=False)
                for i, p in enumerate(prompts)]
    requests += [Request(p, None, max_new_tokens=12, stop_at_eos=False) for p in prompts]
    ours = [c.tokens for c in generate(model, pool, requests, tokenizer=tokenizer)]
    assert ours[:2] != ours[2:]                 # the adapters change what is generated
    jobs = [(tokenizer(r.prompt, add_special_tokens=False)["input_ids"],
             str(tmp_path / "peft" / r.adapter) if r.adapter else None) for r in requests]
    (tmp_path / "run_vllm.py").write_text(SCRIPT)
    subprocess.run([str(VLLM_PYTHON), str(tmp_path / "run_vllm.py"), str(smollm2_dir()),
                    json.dumps(jobs), str(tmp_path / "vllm.json")], check=True, timeout=900,
                   env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"})
    assert json.loads((tmp_path / "vllm.json").read_text()) == ours
