"""DDP on CPU: two gloo processes end with the same adapter, and it trained."""
import subprocess
import sys
from pathlib import Path

import torch

import lorakit


def test_ddp_two_processes_save_identical_adapters(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    proc = subprocess.run([sys.executable, str(worker), str(tmp_path)], capture_output=True,
                          text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, a = lorakit.read_adapter(tmp_path / "rank0.safetensors")
    _, b = lorakit.read_adapter(tmp_path / "rank1.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.endswith("lora_B") and a[k].abs().sum() > 0 for k in a)
