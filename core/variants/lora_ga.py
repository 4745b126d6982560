r"""LoRA-GA (Wang et al. 2024, "LoRA-GA: Low-Rank Adaptation with Gradient Approximation").

    ΔW = scale · (B A − B₀ A₀)        A, B trained; A₀, B₀ their values at init, fixed

LoRA converges slowly because its first steps move W in a random direction. LoRA-GA
chooses A and B so that the first step of s·B A approximates the first step of full
fine-tuning (sec. 3.2): with the full gradient Ḡ averaged over a few batches
(`lorakit.init_from_gradients`) and U S Vᵀ = svd(Ḡ),

    A₀ = Vᵀ[:r]      · d_out^¼ / √γ       the first r right singular vectors
    B₀ = U[:, r:2r]  · d_out^¼ / √γ       the next r left ones (Algorithm 1)

where the factor d_out^¼ / √γ keeps forward and backward stable across widths (sec. 3.3,
γ = `init_gamma`, 16 by default as in the authors' code and PEFT's port; both factors
get it, as in the authors' `lora_ga_init`). s is the adapter's own scale (alpha/r, or
alpha/√r with `rslora`). B₀ A₀ ≠ 0, so the paper offsets the base, W ← W − s·B₀ A₀
(Algorithm 1), and the model's output at step 0 is unchanged.

Checked against the authors' code (github.com/Outsider565/LoRA-GA, `peft/src/peft/tuners/
lora/layer.py`, `LoraLayer.lora_ga_init`, and `LoraGAConfig` in `.../lora/config.py`): the
default direction "ArB2r" is A = Vᵀ[:r], B = U[:, r:2r] of the (out × in) gradient; the
default scale "stable" multiplies both by out^¼ / √stable_gamma, stable_gamma = 16; the
offset s·B₀A₀ is taken from the weight. The same here; their SVD is randomized
(`torch.svd_lowrank`, q = 4r, 4 iterations), ours exact, and their optional `norm_clip`
(off unless set) is not carried.

lorakit never changes the base weight: the offset lives in the adapter as the fixed
buffers A₀, B₀, which is the same model (W − s·B₀A₀ + s·BA) but keeps the base intact
for other adapters, `disabled()` (the true base as a reference) and `detach`, and makes
the file self-contained: it loads onto a clean base and gives the trained model. This
is what PEFT does when it saves a LoRA-GA adapter with
`path_initial_model_for_weight_conversion`: a plain LoRA of rank 2r with factors
[A; A₀] and [B, −B₀], which is also lorakit's `factors()`, its routing and its PEFT
export. PEFT's own `init_lora_weights="lora_ga"` (as of peft 0.21.2) takes A from the same
singular vectors and B from the same next ones but scales B by their singular values
too; a PEFT LoRA-GA folder saved without that conversion is relative to PEFT's offset
base, which lorakit's `import_peft` refuses.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import LoRAConfig
from ..errors import LoraKitError
from ..layers.kinds import LayerKind
from .lora import LoRA


class LoRAGA(LoRA):
    """LoRA whose init is subtracted again: ΔW = s·(B A − B₀ A₀)."""

    method = "lora_ga"
    summary = ('A, B from the SVD of the full gradient (lorakit.init_from_gradients), the output '
               'unchanged at step 0 (LoRA-GA, Wang et al. 2024).')

    def __init__(self, kind: LayerKind, config: LoRAConfig, dtype: torch.dtype,
                 device: torch.device, shared: nn.Module | None = None) -> None:
        super().__init__(kind, config, dtype, device, shared)
        # until init_from_gradients: A₀ = A, B₀ = B = 0, a plain LoRA
        self.register_buffer("lora_A0", self.lora_A.detach().clone())
        self.register_buffer("lora_B0", self.lora_B.detach().clone())
        self.gamma = config.lora_ga.init_gamma

    def factors(self):
        return (torch.cat([self.lora_A, self.lora_A0]),
                torch.cat([self.lora_B, -self.lora_B0], dim=1))

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]

    @torch.no_grad()
    def init_from_gradient(self, grad, weight):
        r = self.rank
        if 2 * r > min(grad.shape):
            raise LoraKitError(f"lora_ga: 2 x rank {2 * r} exceeds min(out, in) = "
                               f"{min(grad.shape)} of a module; choose a smaller rank")
        u, _, vh = torch.linalg.svd(grad, full_matrices=False)
        stable = grad.shape[0] ** 0.25 / self.gamma ** 0.5
        for t, value in ((self.lora_A, vh[:r] * stable), (self.lora_A0, vh[:r] * stable),
                         (self.lora_B, u[:, r:2 * r] * stable),
                         (self.lora_B0, u[:, r:2 * r] * stable)):
            t.copy_(value)

    @classmethod
    def file_keys(cls, path, kind, weight_shape):
        return [*super().file_keys(path, kind, weight_shape), f"{path}.lora_A0",
                f"{path}.lora_B0"]

    @classmethod
    def file_factors(cls, tensors, path, kind, weight_shape):
        a, b = super().file_factors(tensors, path, kind, weight_shape)
        return (torch.cat([a, tensors[f"{path}.lora_A0"]]),
                torch.cat([b, -tensors[f"{path}.lora_B0"]], dim=1))
