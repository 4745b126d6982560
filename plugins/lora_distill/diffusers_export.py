"""The distilled student in diffusers' LoRA layout.

    out_dir/pytorch_lora_weights.safetensors
        unet.<module>.lora_A.weight (r x in), unet.<module>.lora_B.weight (out x r)
        unet.time_embedding.cond_proj.weight          the guidance projection (full)
        header "lora_adapter_metadata": {"unet.r", "unet.lora_alpha",
            "unet.target_modules", "unet.modules_to_save": ["time_embedding.cond_proj"], ...}
    out_dir/guidance.json      how w enters: time_cond_proj_dim, embedding, null class

This is what diffusers' own ``save_lora_weights`` writes for a pipeline's UNet (keys
prefixed with the component name, PEFT's LoraConfig in the header), so
``unet.load_lora_adapter(out_dir, prefix="unet")`` and a pipeline's
``load_lora_weights(out_dir)`` read it; the header carries lora_alpha (diffusers
would otherwise assume alpha = r) and modules_to_save, which PEFT loads as a
``ModulesToSaveWrapper`` around the UNet's ``time_embedding.cond_proj``. The UNet
must have that projection, so it is built with ``time_cond_proj_dim`` set::

    unet = UNet2DConditionModel.from_pretrained(teacher_dir, time_cond_proj_dim=32,
                                                low_cpu_mem_usage=False)
    unet.load_lora_adapter(out_dir, weight_name="pytorch_lora_weights.safetensors",
                           prefix="unet")
    eps = unet(x_t, t, None, class_labels=y,
               timestep_cond=guidance_embedding(w, 32)).sample     # one pass, guided

(`load_student` does exactly this.) The tensors come from lorakit's PEFT export
(`lorakit.export_peft`), renamed from ``base_model.model.`` to ``unet.``.

    lorakit lora-distill export ADAPTER.safetensors OUT_DIR
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from lorakit.atomic import atomic_write
from lorakit.errors import AdapterFileError
from lorakit.io.adapter_file import read_adapter
from lorakit.io.peft import PREFIX, export_peft

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
# the LoraConfig fields diffusers passes on to PEFT from the header
PEFT_FIELDS = ("r", "lora_alpha", "lora_dropout", "use_rslora", "bias", "fan_in_fan_out",
               "target_modules", "modules_to_save", "init_lora_weights", "rank_pattern",
               "alpha_pattern")


def export_diffusers(adapter_file, out_dir, prefix: str = "unet") -> Path:
    """Write a lora-distill adapter file in diffusers' LoRA layout; returns the folder."""
    meta, _ = read_adapter(adapter_file)
    extra = meta.get("extra", {})
    if extra.get("plugin") != "lora-distill":
        raise AdapterFileError(f"{adapter_file} is not a lora-distill adapter (its metadata "
                               f"names plugin {extra.get('plugin')!r})")
    if extra.get("unet_class") != "UNet2DConditionModel":
        raise AdapterFileError(
            f"{adapter_file} adapts a {extra.get('unet_class')}, which has no "
            "time_cond_proj_dim and no LoRA loader in diffusers; use its lorakit file or "
            "`lorakit adapter export` (PEFT layout) instead")
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        export_peft(adapter_file, tmp)
        peft_config = json.loads((Path(tmp) / "adapter_config.json").read_text())
        with safe_open(str(Path(tmp) / "adapter_model.safetensors"), framework="pt") as f:
            tensors = {f"{prefix}." + k[len(PREFIX):]: f.get_tensor(k) for k in f.keys()}
    lora_config = {f"{prefix}.{k}": peft_config[k] for k in PEFT_FIELDS if k in peft_config}
    header = {"format": "pt", METADATA_KEY: json.dumps(lora_config, indent=2, sort_keys=True)}
    atomic_write(out_dir / WEIGHT_NAME, lambda tmp: save_file(tensors, tmp, metadata=header))
    guidance = {"time_cond_proj_dim": extra["guidance_embed_dim"],
                "guidance_embedding": extra.get("guidance_embedding"),
                "guidance_range": extra.get("guidance_range"),
                "conditioning": extra.get("conditioning"), "null_class": extra.get("null_class"),
                "pretrained": extra.get("pretrained"), "prefix": prefix}
    atomic_write(out_dir / "guidance.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(guidance, indent=2)))
    return out_dir


def load_student(pretrained, lora_dir):
    """A stock diffusers UNet2DConditionModel with the exported student loaded by diffusers."""
    from diffusers import UNet2DConditionModel

    from lorakit.domains.imaging.guided_unet import unet_folder

    lora_dir = Path(lora_dir)
    guidance = json.loads((lora_dir / "guidance.json").read_text())
    unet = UNet2DConditionModel.from_pretrained(
        unet_folder(pretrained), time_cond_proj_dim=guidance["time_cond_proj_dim"],
        low_cpu_mem_usage=False)
    unet.load_lora_adapter(str(lora_dir), weight_name=WEIGHT_NAME, prefix=guidance["prefix"])
    return unet


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="lorakit lora-distill export",
                                description="write a lora-distill adapter in diffusers' LoRA "
                                            "layout (pytorch_lora_weights.safetensors)")
    p.add_argument("adapter", type=Path, help="lorakit adapter file (adapter.safetensors)")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--prefix", default="unet", help="component prefix of the keys")
    args = p.parse_args(argv)
    print(export_diffusers(args.adapter, args.out_dir, args.prefix))


if __name__ == "__main__":
    main()
