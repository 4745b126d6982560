"""The embedded default base: the tiny DUSt3R in assets/, and the loader that falls back to it.

The network and the checkpoint format are the geometry domain's
(`lorakit.domains.geometry.dust3r`); what lora3d adds is which checkpoint `None` means.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from lorakit.domains.geometry.dust3r import load_checkpoint
from lorakit.errors import LoraKitError

EMBEDDED = Path(__file__).with_name("assets") / "tiny_dust3r.pth"


def load_base(checkpoint=None) -> tuple[nn.Module, dict]:
    """A DUSt3R model and its constructor kwargs; `None` is the embedded tiny default."""
    if checkpoint is None:
        if not EMBEDDED.is_file():
            raise LoraKitError(f"the embedded tiny DUSt3R ({EMBEDDED.name}) is missing: run "
                               "`python -m lorakit.plugins.lora3d.pretrain` to make it")
        checkpoint = EMBEDDED
    return load_checkpoint(checkpoint)
