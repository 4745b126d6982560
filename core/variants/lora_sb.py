r"""LoRA-SB (Ponkshe et al. 2024, "Initialization using Update Approximation is a Silver
Bullet for Extremely Efficient Low-Rank Fine-Tuning").

    x ─► dropout ─► A (r × in, fixed) ─► R (r × r, trained) ─► · scale ─► B (out × r, fixed) ─► + W x

    ΔW = scale · B R A,  r² trained numbers per module

LoRA-XS's architecture (a trained r × r R between fixed B and A) with LoRA-SB's init:
updating R moves W by the "equivalent gradient" scale² · B Bᵀ G Aᵀ A, and with
orthonormal B and A that is the best rank-r approximation of the full gradient G in
their subspaces at every step (sec. 3-4). So B and A should span the subspaces full
fine-tuning moves in, which the first step of full fine-tuning reveals: from the
gradient Ḡ averaged over a few batches (`lorakit.init_from_gradients`),

    ΔW₁ ≈ −init_lr · sign(Ḡ)           Adam's first step (sec. 4; the authors'
                                        `estimate_and_process_grads_torch`)
    U S Vᵀ = svd(ΔW₁)
    B = U[:, :r],  A = Vᵀ[:r],  R = diag(S[:r]) / scale   (sec. 4)

so scale · B R A is the best rank-r approximation of ΔW₁ (Eckart-Young): the adapted
model starts one approximate full fine-tuning step along, in orthonormal bases; no
offset of W is needed, the step is meant to be taken. Before `init_from_gradients`,
B and A are random orthonormal and R = 0 (a LoRA-XS with random bases). A and B are
buffers: saved in the file and in checkpoints, never given to the optimizer.

Checked against the authors' code (github.com/CERT-Lab/lora-sb, also published as
RaghavSinghal10/lora-sb): `utils/gradient_utils.py` (`estimate_and_process_grads_torch`:
the summed gradients become −lr·sign(Ḡ)), `utils/svd_utils.py` (`get_svd_grad`: a rank-r
`torch.svd_lowrank`) and `utils/initialization_utils.py` (`find_and_initialize_grad`:
B = the left singular vectors, A = the right ones, R = diag(S), A and B frozen). The same
here, with two notes: their scripts fix lora_alpha = r (scale 1), where R = diag(S) is
ours divided by the scale, so scale · B R A is the same matrix for any alpha; and their
step size is the first warm-up learning rate, lr / (warmup_ratio · total steps), where
ours is `init_lr` (1e-4 by default: set it to that value to match).

In PEFT's layout the update is exactly the LoRA with factors A and B·R.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import LoRAConfig
from ..errors import LoraKitError
from ..layers.kinds import LayerKind
from .base import Variant


class LoRASB(Variant):
    method = "lora_sb"
    summary = ('dW = B R A with A, B fixed and only the r x r R trained, set by '
               'lorakit.init_from_gradients (LoRA-SB, Ponkshe et al. 2024).')
    init_keeps_output = False    # the init is the approximated first step, not a no-op

    def __init__(self, kind: LayerKind, config: LoRAConfig, dtype: torch.dtype,
                 device: torch.device, shared: nn.Module | None = None) -> None:
        super().__init__(kind, config, dtype, device, shared)
        r = config.rank
        a = torch.empty(r, kind.in_features, dtype=dtype, device=device)
        b = torch.empty(kind.out_features, r, dtype=dtype, device=device)
        nn.init.orthogonal_(a)
        nn.init.orthogonal_(b)
        self.register_buffer("lora_A", a)
        self.register_buffer("lora_B", b)
        self.lora_R = nn.Parameter(torch.zeros(r, r, dtype=dtype, device=device))
        self.init_lr = config.lora_sb.init_lr

    def factors(self):
        return self.lora_A, self.lora_B @ self.lora_R

    @property
    def rank(self) -> int:
        return self.lora_R.shape[0]

    @torch.no_grad()
    def init_from_gradient(self, grad, weight):
        r = self.rank
        if r > min(grad.shape):
            raise LoraKitError(f"lora_sb: rank {r} exceeds min(out, in) = {min(grad.shape)} "
                               "of a module; choose a smaller rank")
        step = -self.init_lr * torch.sign(grad)
        u, s, vh = torch.linalg.svd(step, full_matrices=False)
        self.lora_B.copy_(u[:, :r])
        self.lora_A.copy_(vh[:r])
        self.lora_R.copy_(torch.diag(s[:r]) / self.scale)

    @classmethod
    def file_keys(cls, path, kind, weight_shape):
        return [f"{path}.lora_A", f"{path}.lora_B", f"{path}.lora_R"]

    @classmethod
    def file_factors(cls, tensors, path, kind, weight_shape):
        return tensors[f"{path}.lora_A"], tensors[f"{path}.lora_B"] @ tensors[f"{path}.lora_R"]
