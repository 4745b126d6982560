"""A diffusers UNet folder as a guided denoiser: ε(x_t, t, c, w).

Classifier-free guidance (Ho & Salimans 2022) mixes a conditional and an
unconditional prediction of one network,

    ε̃ = ε_u + w · (ε_c − ε_u),      ε_c = ε(x_t, t, c),  ε_u = ε(x_t, t, ∅),

which costs two UNet passes per denoising step. A guidance-distilled student
(Meng et al. 2023) takes w as an input instead and returns ε̃ in one pass. Here w
enters the way diffusers' latent consistency models take it: a sinusoidal
embedding of (w − 1) (`guidance_embedding`, the formula of
`LatentConsistencyModelPipeline.get_guidance_scale_embedding`) goes through the
UNet's time-conditioning projection ``time_embedding.cond_proj``
(config ``time_cond_proj_dim``), whose output is added to the timestep features.

`load_unet` reads a folder written by ``save_pretrained`` (a UNet folder, or a
pipeline folder whose ``unet/`` is used). When the UNet has no
``time_cond_proj_dim``, it is built from the same config with that field set and
the pretrained weights loaded into it; the one new tensor,
``time_embedding.cond_proj.weight``, starts at zero, so the model still computes
exactly what the pretrained one did. Nothing of diffusers is patched: the result
is a stock ``UNet2DConditionModel`` that ``from_pretrained(dir,
time_cond_proj_dim=...)`` would also build.

``UNet2DModel`` has no ``time_cond_proj_dim`` in diffusers. For it, the same
``cond_proj`` Linear is added as a child of ``time_embedding`` and applied by a
forward pre-hook (PyTorch's public hook API, no diffusers code replaced); such a
student exports as a lorakit/PEFT adapter, not in diffusers' LoRA layout.

The conditioning comes from the config: ``num_class_embeds`` (class labels, the
last class is the null class by default) or cross-attention blocks (prompt
embeddings as ``encoder_hidden_states``; the null condition is the embedding of
the empty prompt, or zeros when none is given).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from lorakit.errors import CheckpointError, LoraKitError

UNET_CLASSES = ("UNet2DConditionModel", "UNet2DModel")
WEIGHTS = "diffusion_pytorch_model.safetensors"
COND_PROJ = "time_embedding.cond_proj"


@dataclass
class Conditioning:
    """What the UNet is conditioned on, read from its config."""

    kind: Literal["class", "text"]
    num_classes: int | None = None  # size of the class table, null class included
    null_class: int | None = None
    cross_attention_dim: int | None = None

    def describe(self) -> str:
        if self.kind == "class":
            return f"class labels 0..{self.num_classes - 1} (null class {self.null_class})"
        return f"prompt embeddings of width {self.cross_attention_dim}"


def guidance_embedding(w: torch.Tensor, dim: int, dtype: torch.dtype = torch.float32
                       ) -> torch.Tensor:
    """Sinusoidal embedding of the guidance scale, as diffusers' LCM pipeline: of (w − 1).

    w = 1 (plain conditional sampling) embeds to [0 … 0, 1 … 1]; the projection of it
    is learned, so the offset only matters for compatibility with LCM-style UNets.
    """
    w = (w.to(torch.float32).reshape(-1) - 1.0) * 1000.0
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=w.device)
                      * -(math.log(10000.0) / (half - 1)))
    angles = w[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2 == 1:
        emb = nn.functional.pad(emb, (0, 1))
    return emb.to(dtype)


# --- reading a folder ----------------------------------------------------------------
def unet_folder(path) -> Path:
    """The folder holding the UNet's config.json: `path` itself or its `unet/`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"pretrained model folder {path} does not exist")
    if path.is_file():
        raise CheckpointError(
            f"{path} is a file; pass the diffusers model folder written by save_pretrained "
            "(config.json + diffusion_pytorch_model.safetensors), or a pipeline folder")
    if (path / "unet" / "config.json").is_file():
        return path / "unet"
    if (path / "config.json").is_file():
        return path
    what = ("a pipeline folder (model_index.json) without unet/"
            if (path / "model_index.json").is_file() else "no config.json")
    raise CheckpointError(
        f"{path} is not a diffusers UNet folder: {what}. Pass a folder written by "
        "UNet2DConditionModel.save_pretrained / UNet2DModel.save_pretrained, or a pipeline "
        "folder whose unet/ holds one")


def read_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text())
    except ValueError as err:
        raise CheckpointError(f"{folder / 'config.json'} is not valid JSON ({err})") from None
    name = config.get("_class_name")
    if name not in UNET_CLASSES:
        raise CheckpointError(
            f"{folder} is not a diffusers UNet: its config.json has _class_name={name!r}, "
            f"lora-distill needs one of {', '.join(UNET_CLASSES)}")
    return config


def conditioning_of(config: dict, null_class: int | None = None, source: str = "the UNet"
                    ) -> Conditioning:
    """Class or text conditioning from a UNet config, or a clear error when it has neither."""
    n = config.get("num_class_embeds")
    if n is not None and config.get("class_embed_type") is None:
        if n < 2:
            raise LoraKitError(f"{source}: num_class_embeds={n} leaves no room for a null class")
        null = n - 1 if null_class is None else null_class
        if not 0 <= null < n:
            raise LoraKitError(f"{source}: null_class {null} is outside 0..{n - 1}")
        return Conditioning("class", num_classes=n, null_class=null)
    blocks = list(config.get("down_block_types") or []) + [config.get("mid_block_type") or ""]
    if config.get("_class_name") == "UNet2DConditionModel" and any("CrossAttn" in b
                                                                    for b in blocks):
        return Conditioning("text", cross_attention_dim=config.get("cross_attention_dim"))
    raise LoraKitError(
        f"{source} has neither class nor text conditioning (num_class_embeds is "
        f"{n!r}, class_embed_type is {config.get('class_embed_type')!r}, no cross-attention "
        "blocks). Classifier-free guidance needs a conditional model trained with a null "
        "condition; there is nothing to guide or distil here")


def _load_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = folder / WEIGHTS
    index = folder / (WEIGHTS + ".index.json")
    if single.is_file():
        files = [single]
    elif index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [folder / s for s in shards]
    else:
        pickled = folder / "diffusion_pytorch_model.bin"
        hint = (" It has diffusion_pytorch_model.bin (a pickle), which lorakit does not "
                "load: re-save it with save_pretrained(..., safe_serialization=True)."
                if pickled.exists() else "")
        raise CheckpointError(f"{folder} has no {WEIGHTS}.{hint}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except Exception as err:
            raise CheckpointError(f"{f} is truncated or corrupt ({err})") from None
    return state


def load_unet(path, guidance_embed_dim: int = 32, null_class: int | None = None,
              dtype: torch.dtype = torch.float32) -> GuidedUNet:
    """A diffusers UNet folder as a `GuidedUNet`, with a (zero) guidance projection added."""
    import diffusers

    folder = unet_folder(path)
    config = read_config(folder)
    cond = conditioning_of(config, null_class, source=str(folder))
    cls = getattr(diffusers, config["_class_name"])
    native = cls.__name__ == "UNet2DConditionModel"
    own = config.get("time_cond_proj_dim") if native else None
    added = native and own is None
    if added:
        config = {k: v for k, v in config.items() if k != "_use_default_values"}
        config["time_cond_proj_dim"] = int(guidance_embed_dim)
    unet = cls.from_config(config)
    state = _load_state(folder)
    missing, unexpected = unet.load_state_dict(state, strict=False)
    allowed = {f"{COND_PROJ}.weight"} if added else set()
    if set(missing) - allowed or unexpected:
        raise CheckpointError(
            f"{folder}: the weights do not fit its config.json (missing "
            f"{sorted(set(missing) - allowed)[:3]}, unexpected {sorted(unexpected)[:3]})")
    if added:
        _zero_cond_proj(unet)
    guided = GuidedUNet(unet, cond, guidance_embed_dim=own or guidance_embed_dim,
                        source=str(folder))
    return guided if dtype == torch.float32 else guided.to(dtype)


def build_guided(unet: nn.Module, guidance_embed_dim: int = 32, null_class: int | None = None
                 ) -> GuidedUNet:
    """`GuidedUNet` around an in-memory diffusers UNet (tests, benchmarks, random weights)."""
    config = {k: v for k, v in unet.config.items() if k != "_use_default_values"}
    config["_class_name"] = type(unet).__name__
    cond = conditioning_of(config, null_class, source=type(unet).__name__)
    own = getattr(unet.config, "time_cond_proj_dim", None)
    if type(unet).__name__ == "UNet2DConditionModel" and own is None:
        config["time_cond_proj_dim"] = int(guidance_embed_dim)
        new = type(unet).from_config(config)
        missing, _ = new.load_state_dict(unet.state_dict(), strict=False)
        dtype = next(unet.parameters()).dtype
        if dtype != torch.float32:
            new = new.to(dtype)
        assert set(missing) == {f"{COND_PROJ}.weight"}, missing
        unet = _zero_cond_proj(new)
    return GuidedUNet(unet, cond, guidance_embed_dim=own or guidance_embed_dim,
                      source=type(unet).__name__)


def _zero_cond_proj(unet: nn.Module) -> nn.Module:
    """The added guidance projection starts at zero: the UNet computes what it did before."""
    with torch.no_grad():
        unet.get_submodule(COND_PROJ).weight.zero_()
    return unet


# --- the denoiser -------------------------------------------------------------------
class GuidedUNet(nn.Module):
    """ε(x_t, t, c, w) of a diffusers UNet; w=None is the plain (teacher) forward.

    `cond` is a LongTensor of class labels or a (B, L, D) tensor of prompt embeddings;
    `null(cond)` gives the matching null condition for classifier-free guidance.
    """

    def __init__(self, unet: nn.Module, conditioning: Conditioning, guidance_embed_dim: int,
                 source: str = "unet") -> None:
        super().__init__()
        self.unet = unet
        self.conditioning = conditioning
        self.guidance_embed_dim = int(guidance_embed_dim)
        self.source = source
        self.native = type(unet).__name__ == "UNet2DConditionModel"
        self._condition: torch.Tensor | None = None
        if self.native:
            proj = unet.get_submodule(COND_PROJ)
            if proj.in_features != self.guidance_embed_dim:
                raise LoraKitError(f"{source}: time_cond_proj_dim is {proj.in_features}, "
                                   f"not {self.guidance_embed_dim}")
        else:
            temb = unet.time_embedding
            if not hasattr(temb, "cond_proj") or temb.cond_proj is None:
                temb.cond_proj = nn.Linear(self.guidance_embed_dim, temb.linear_1.in_features,
                                           bias=False)
                nn.init.zeros_(temb.cond_proj.weight)
            temb.register_forward_pre_hook(self._add_guidance)

    def _add_guidance(self, module: nn.Module, args: tuple):
        """UNet2DModel only: time_embedding(sample) -> time_embedding(sample + cond_proj(g))."""
        if self._condition is None:
            return None
        sample = args[0]
        return (sample + module.cond_proj(self._condition.to(sample.dtype)),) + args[1:]

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        c = self.unet.config
        size = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
        return (c.in_channels, size, size)

    def null(self, cond: torch.Tensor, uncond: torch.Tensor | None = None) -> torch.Tensor:
        if self.conditioning.kind == "class":
            return torch.full_like(cond, self.conditioning.null_class)
        if uncond is not None:
            return uncond.expand_as(cond) if uncond.shape[0] == 1 else uncond
        return torch.zeros_like(cond)

    def check_cond(self, cond: torch.Tensor) -> None:
        c = self.conditioning
        if c.kind == "class":
            if cond.dtype not in (torch.int64, torch.int32) or cond.dim() != 1:
                raise LoraKitError(f"{self.source} is class-conditional: pass class labels as a "
                                   f"1-D integer tensor, got {tuple(cond.shape)} {cond.dtype}")
            if cond.numel() and (int(cond.min()) < 0 or int(cond.max()) >= c.num_classes):
                raise LoraKitError(f"class label {int(cond.max())} is outside 0..{c.num_classes - 1}"
                                   f" of {self.source}")
        elif cond.dim() != 3 or cond.shape[-1] != c.cross_attention_dim:
            raise LoraKitError(f"{self.source} is text-conditional: pass prompt embeddings of "
                               f"shape (B, L, {c.cross_attention_dim}), got {tuple(cond.shape)}")

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                w: torch.Tensor | float | None = None) -> torch.Tensor:
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        g = None
        if w is not None:
            w = torch.as_tensor(w, dtype=torch.float32, device=x.device)
            w = w.expand(x.shape[0]) if w.dim() == 0 else w
            g = guidance_embedding(w, self.guidance_embed_dim, dtype=self.dtype)
        kwargs = {}
        if self.conditioning.kind == "class":
            kwargs["class_labels"] = cond
        else:
            kwargs["encoder_hidden_states"] = cond.to(self.dtype)
        if self.native:
            if self.conditioning.kind == "class":
                kwargs["encoder_hidden_states"] = None
            return self.unet(x, t, timestep_cond=g, **kwargs).sample
        self._condition = g
        try:
            return self.unet(x, t, **kwargs).sample
        finally:
            self._condition = None

    def cfg(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
            w: torch.Tensor | float, uncond: torch.Tensor | None = None,
            batched: bool = False) -> torch.Tensor:
        """The guided prediction ε_u + w (ε_c − ε_u): two passes, or one pass of 2B if batched."""
        null = self.null(cond, uncond)
        if batched:
            tt = t.expand(x.shape[0]) if t.dim() == 0 else t
            eps = self(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([null, cond]))
            eps_u, eps_c = eps.chunk(2)
        else:
            eps_c = self(x, t, cond)
            eps_u = self(x, t, null)
        w = torch.as_tensor(w, dtype=eps_c.dtype, device=x.device)
        w = w.view(-1, *([1] * (x.dim() - 1))) if w.dim() else w
        return eps_u + w * (eps_c - eps_u)
