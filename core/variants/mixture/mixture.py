r"""Mixtures of LoRA experts: one machinery for MixLoRA, LLaVA-MoLE, LoRAMoE and MoLA.

    x ─┬─► router R (E × in) ─► softmax ─► p (E) ─► top-k (or dense) ─► gates g (E)
       │                                                                   │
       └─► dropout ─► A (E·r × in: every expert's A, stacked) ─► h (E × r) ⊙ g·scale
                                                                           │
                       B (out × E·r: every expert's B, side by side) ◄─────┘ ─► + W x

    y = W x + Σ_e g_e(x) · scale · B_e A_e x        g_e = 0 outside each token's top k

Each adapted module holds E LoRA experts (A_e r × in, B_e out × r, B at zero, so the model
starts at the base) as two stacked tensors and a token-level router. A paper is a
configuration (`LoRAConfig`), not a class:

- MixLoRA (Li et al. 2024): `router="topk", top_k=2, n_experts=8` on the FFN, the gates
  renormalised over the k chosen (Mixtral's softmax over the top k) and the Switch load
  balance loss `router_aux_loss`; its attention LoRA is a second named adapter.
- LLaVA-MoLE (Chen et al. 2024): `top_k=1` on the MLP. With one expert the gate is the
  router's probability itself, not renormalised (Switch Transformer, Fedus et al. 2022,
  sec. 2.1): renormalised it would be 1 and the router would learn nothing.
- LoRAMoE (Dou et al. 2024): `router="dense"`, every expert weighted by the softmax, and
  the localized balancing constraint `lbc_weight`, `lbc_delta` (sec. 3.2): the first half
  of the experts serve the new tasks, the second half keep the base's world knowledge.
- `router_scope="block"`: one router per depth layer (MixLoRA's and LLaVA-MoLE's one
  router per FFN): the layer's first adapted module in model order routes each token
  (from its input, the block's input), and the layer's other adapted modules use the
  same choice, so expert e of the FFN is the e-th LoRA of each of its matrices. The
  router is a tensor the layer's modules share (`BlockRouter`, file key
  `<layer>.moe_router`); `"module"` (default) gives every module its own router.
- MoLA (Gao et al. 2024): a per-layer expert count, `expert_schedule="2,4,6,8"` (values
  over equal depth segments: quarters here) or `experts_per_layer=[...]` (one per layer).

An expert is any method of `EXPERTS` (`expert_method`: LoRA, DoRA, FFA-LoRA): the
mixture builds E instances of it, each initialised as that method initialises itself,
and keeps each of their tensors stacked under the method's own name (lora_A (E, r, in),
lora_B (E, out, r), DoRA's lora_magnitude (E, out), ...): one file key per name, as a
single adapter of that method has. Methods with a training hook of their own (ALLoRA's
gradient rescaling, GGPO's perturbed pass, BA-LoRA's output terms, S2-LoRA's shared
basis and sparsity step, the gradient-driven inits of LoRA-GA and LoRA-SB) are refused:
the stacked experts would skip their hook.

The computation is stacked, never a Python loop over experts:

- plain-product experts (LoRA, FFA-LoRA), `expert_compute="dense"` (the default): every
  expert's r-wide down projection is one matmul (E·r columns, what one LoRA of rank E·r
  costs), the gates zero all but each token's k experts, and the up projection is one
  matmul over the E·r wide activations;
- `expert_compute="gather"`: each token's k (A, B) pairs are gathered from the stacks and
  applied by two batched matmuls (the mixed-adapter batch kernel `LayerKind.routed`,
  with each (token, choice) as a row), so FLOPs scale with k, not E; it copies
  tokens × k × r × (in + out) weight numbers per forward, which on a CPU at these ranks
  costs more than the E·r columns it saves (`benchmarks/studies/moe_step_cost.py` times both);
- experts whose update is not a product (DoRA): the expert's own `forward`, vectorised
  over the stacked tensors with `torch.func.vmap` (E outputs per token), weighted by
  the gates.

Exact zeros outside the top k mean an expert no token chose gets exactly zero gradient.

A mixture's update depends on each token (ΔW(x)), so it has no single B A: it cannot be
merged into the base, routed in a mixed-adapter batch, or exported to PEFT's LoRA layout.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ...config import LoRAConfig
from ...errors import LoraKitError
from ...layers.kinds import LayerKind
from ..base import Variant
from .experts import expert_class, gathered, mixed
from .routers import (
    BlockRouter,
    allocation,
    layer_key,
    localized_balance,
    router_entropy,
    router_key,
    switch_balance,
)

NOT_A_PRODUCT = ("a mixture of LoRA experts has no fixed update: each token's ΔW depends on "
                 "its routing, so it cannot be folded into the base weight or written as one "
                 "B·A")



class Mixture(Variant):
    """E LoRA experts, stacked, and a token-level router (see the module docstring)."""

    method = "mixture"
    summary = ('n_experts LoRA experts of rank r per module and a token-level router (MixLoRA, '
               'LLaVA-MoLE, LoRAMoE, MoLA; see the mixture options).')
    peft = False
    routable = False
    mergeable = False
    options = ("n_experts", "top_k", "router", "router_scope", "expert_method", "expert_compute",
               "expert_schedule", "experts_per_layer", "router_aux_loss", "lbc_weight",
               "lbc_delta")
    merge_refusal = ("each token's update depends on its routing, so it has no fixed rank-1 "
                     "units to merge and cannot be folded into the base either. Keep it as "
                     "its own adapter, or merge the single-LoRA adapters it was built from")
    peft_refusal = ("PEFT's LoRA layout holds one B·A per module, but a mixture holds E "
                    "experts and a router that weighs them per token; keep the lorakit file "
                    "(lorakit.load_adapter)")

    def __init__(self, kind: LayerKind, config: LoRAConfig, dtype: torch.dtype,
                 device: torch.device, shared: nn.Module | None = None) -> None:
        super().__init__(kind, config, dtype, device, shared)
        refusal = self.kind_refusal(type(kind))
        if refusal:
            raise LoraKitError(f"{refusal}, not a {kind.describe()}")
        e = config.mixture.n_experts
        self.dense = config.mixture.router == "dense"
        self.top_k = e if self.dense else config.mixture.top_k
        self.aux_weight = 0.0 if self.dense else config.mixture.router_aux_loss
        self.lbc_weight, self.lbc_delta = config.mixture.lbc_weight, config.mixture.lbc_delta
        self.expert_cls = expert_class(config.mixture.expert_method)
        self.product = self.expert_cls.routable       # ΔW = B A: the stacked matmul paths
        self.gather = config.mixture.expert_compute == "gather" and self.product   # plan() refuses

        expert_config = dataclasses.replace(config, method=config.mixture.expert_method)
        experts = [self.expert_cls(kind, expert_config, dtype, device) for _ in range(e)]
        for name, tensor in experts[0].own_tensors().items():
            stacked = torch.stack([x.own_tensors()[name].detach() for x in experts])
            if isinstance(tensor, nn.Parameter):
                setattr(self, name, nn.Parameter(stacked))
            else:
                self.register_buffer(name, stacked)
        self.expert_names = tuple(experts[0].own_tensors())
        self._template = (experts[0],)   # a tuple: not a submodule, its tensors not ours
        self.block = shared                  # a BlockRouter under router_scope "block"
        self.leads = shared is not None and not shared.claimed
        if shared is None:
            self.moe_router = nn.Parameter(torch.empty(e, kind.in_features, dtype=dtype,
                                                       device=device))
            nn.init.kaiming_uniform_(self.moe_router, a=math.sqrt(5))   # as nn.Linear
        else:
            shared.claimed = True
        # routing seen in training, kept in the file for `adapter inspect`
        self.register_buffer("moe_load", torch.zeros(e, dtype=torch.float32, device=device))
        self.register_buffer("moe_tokens", torch.zeros((), dtype=torch.float32, device=device))
        self.register_buffer("moe_entropy", torch.zeros((), dtype=torch.float32, device=device))
        self.row_types: torch.Tensor | None = None
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int] | None = None

    @property
    def n_experts(self) -> int:
        return self.lora_A.shape[0]

    @property
    def rank(self) -> int:
        return self.lora_A.shape[1]

    @classmethod
    def kind_refusal(cls, kind):
        if not kind.float_input or not kind.routable:
            return ("a mixture of experts routes each token by its features: it adapts "
                    "Linear and Conv1D layers")
        return None

    @classmethod
    def shared_key(cls, kind, path, config):
        return layer_key(path) if config.mixture.router_scope == "block" else None

    @classmethod
    def make_shared(cls, kind, config, dtype, device, key):
        return BlockRouter(key, config.mixture.n_experts, kind.in_features, dtype, device)

    def shared_tensors(self):
        return {} if self.block is None else {router_key(self.block.layer): self.block.weight}

    @classmethod
    def plan(cls, config: LoRAConfig, paths: list[str]) -> dict[str, LoRAConfig]:
        if config.mixture.expert_compute == "gather" and not expert_class(config.mixture.expert_method).routable:
            raise LoraKitError(f"expert_compute='gather' gathers each token's (A, B); "
                               f"{config.mixture.expert_method} experts are not a product B A: "
                               "use "
                               "expert_compute='dense'")
        counts = allocation(config, paths)
        return {p: dataclasses.replace(config, mixture=dataclasses.replace(
                    config.mixture, n_experts=n, experts_per_layer=[], expert_schedule=""))
                for p, n in counts.items()}

    # --- routing ----------------------------------------------------------------------
    def route(self, rows: torch.Tensor) -> torch.Tensor:
        """(tokens, E) router probabilities: this module's router, or under router_scope
        "block" the layer's, run by its first module and reused by the others."""
        if self.block is None:
            return torch.softmax(F.linear(rows, self.moe_router).float(), dim=-1)
        if self.leads:
            self.block.routed = torch.softmax(F.linear(rows, self.block.weight).float(), dim=-1)
            return self.block.routed
        routed = self.block.routed
        if routed is None or routed.shape[0] != rows.shape[0]:
            seen = "no tokens" if routed is None else f"{routed.shape[0]} tokens"
            raise LoraKitError(
                f"router_scope='block': a module of layer {self.block.layer!r} got "
                f"{rows.shape[0]} tokens, but the layer's router last routed {seen}. The "
                "layer's first adapted module must run first, on the same tokens (an FFN's "
                "up projection before its down projection); otherwise use "
                "router_scope='module'")
        return routed

    def choose(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each token's top-k (weights, expert ids), both (tokens, k)."""
        top, index = probs.topk(self.top_k, dim=-1)
        if self.top_k > 1:       # Mixtral / MixLoRA: a softmax over the k chosen
            top = top / top.sum(-1, keepdim=True)
        return top, index

    def gates(self, probs: torch.Tensor,
              chosen: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """(tokens, E) weights of the experts, zero outside each token's top k (`chosen`:
        `choose(probs)` when the caller has it already)."""
        if self.dense:
            return probs
        top, index = chosen if chosen is not None else self.choose(probs)
        return torch.zeros_like(probs).scatter(-1, index, top)

    def forward(self, x: torch.Tensor, kind: LayerKind, base: nn.Module) -> torch.Tensor:
        x = x.to(self.lora_A.dtype)
        rows = x.reshape(-1, x.shape[-1])
        probs = self.route(rows)
        chosen = self.choose(probs) if self.gather else None
        gates = self.gates(probs, chosen)
        if chosen is not None:
            top, index = chosen
            y = gathered(kind, self.dropout(rows), self.lora_A, self.lora_B, index,
                         top * self.scale)
        elif self.product:
            y = mixed(kind, self.dropout(rows), self.lora_A, self.lora_B, gates * self.scale)
        else:
            y = torch.einsum("ne,eno->no", gates.to(rows.dtype),
                             self.expert_outputs(rows, kind, base))
        batch = x.shape[0] if x.dim() > 2 else rows.shape[0]
        self._last = (probs, gates, gates > 0, batch)
        if self.training:
            self._record(probs, gates)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    def expert_tensors(self) -> dict[str, torch.Tensor]:
        """The experts' stacked tensors by their method's names, each (E, ...)."""
        return {n: getattr(self, n) for n in self.expert_names}

    def expert_outputs(self, rows: torch.Tensor, kind: LayerKind,
                       base: nn.Module) -> torch.Tensor:
        """(E, rows, out): every expert's own `forward` on every row, vectorised over the
        stacked tensors (each expert its own dropout draw)."""
        template = self._template[0]

        def one(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
            return torch.func.functional_call(template, tensors, (rows, kind, base))
        return torch.func.vmap(one, randomness="different")(self.expert_tensors())

    @torch.no_grad()
    def init_from_weight(self, weight: torch.Tensor) -> None:
        """Each expert's own init from the base weight (DoRA: its magnitude), one at a
        time through the template expert; a no-op for methods without one."""
        template = self._template[0]
        if type(template).init_from_weight is Variant.init_from_weight:
            return
        mine, theirs = self.expert_tensors(), template.own_tensors()
        for e in range(self.n_experts):
            for name, tensor in mine.items():
                theirs[name].data.copy_(tensor[e])
            template.init_from_weight(weight)
            for name, tensor in mine.items():
                tensor[e].copy_(theirs[name])

    @torch.no_grad()
    def _record(self, probs: torch.Tensor, gates: torch.Tensor) -> None:
        share = gates if self.dense else (gates > 0).float() / self.top_k
        self.moe_load += share.sum(0)
        self.moe_tokens += probs.shape[0]
        self.moe_entropy += router_entropy(probs) * probs.shape[0]

    # --- the protocol's training hooks -------------------------------------------------
    def set_row_types(self, row_types: torch.Tensor | None) -> None:
        self.row_types = row_types

    def aux_losses(self) -> dict[str, torch.Tensor]:
        if self._last is None or (self.block is not None and not self.leads):
            return {}      # a block's router is balanced once, by the module that runs it
        probs, gates, chosen, batch = self._last
        terms = {}
        if self.aux_weight > 0:
            terms["balance"] = self.aux_weight * switch_balance(probs, chosen)
        if self.lbc_weight > 0:
            terms["lbc"] = self.lbc_weight * localized_balance(gates, batch, self.row_types,
                                                               self.lbc_delta)
        return terms

    def routing_stats(self) -> dict:
        """Last forward's load per expert (share of the routing) and router entropy, and the
        same accumulated over training."""
        stats: dict = {"experts": self.n_experts, "top_k": self.top_k}
        if self._last is not None:
            probs, gates, chosen, _ = self._last
            share = gates if self.dense else chosen.float() / self.top_k
            stats["load"] = share.mean(0).detach()
            stats["entropy"] = router_entropy(probs).detach()
        tokens = float(self.moe_tokens)
        if tokens:
            stats["train_load"] = (self.moe_load / tokens).detach()
            stats["train_entropy"] = float(self.moe_entropy) / tokens
        return stats

    # --- no fixed ΔW ------------------------------------------------------------------
    def factors(self):
        raise LoraKitError(NOT_A_PRODUCT)

    def delta_weight(self, weight=None):
        raise LoraKitError(NOT_A_PRODUCT)

    def merge_into(self, weight, kind, factor):
        raise LoraKitError(f"{NOT_A_PRODUCT}; keep it unmerged")

    unmerge_from = merge_into

    def active_rank(self, tol: float) -> int:
        return self.rank

    # --- the file ---------------------------------------------------------------------
    @classmethod
    def file_keys(cls, path, kind, weight_shape):
        return cls.keys_for(LoRAConfig(method="mixture"), path, kind, weight_shape)

    @classmethod
    def keys_for(cls, config, path, kind, weight_shape):
        experts = expert_class(config.mixture.expert_method).file_keys(path, kind, weight_shape)
        router = (router_key(layer_key(path)) if config.mixture.router_scope == "block"
                  else f"{path}.moe_router")
        return [*experts, router, *(f"{path}.{n}" for n in ("moe_load", "moe_tokens",
                                                            "moe_entropy"))]

    @classmethod
    def file_factors(cls, tensors, path, kind, weight_shape):
        raise LoraKitError(f"module {path!r}: {NOT_A_PRODUCT}")

    @classmethod
    def file_delta(cls, tensors, path, kind, weight_shape, scale, weight=None):
        raise LoraKitError(f"module {path!r}: {NOT_A_PRODUCT}")

    @classmethod
    def file_rank(cls, tensors, path, kind, weight_shape) -> int:
        return int(tensors[f"{path}.lora_A"].shape[1])

    @classmethod
    def file_active_rank(cls, tensors, path, kind, weight_shape, tol):
        return cls.file_rank(tensors, path, kind, weight_shape)

    @classmethod
    def file_info(cls, tensors, path, kind, weight_shape) -> dict:
        experts = int(tensors[f"{path}.lora_A"].shape[0])
        tokens = float(tensors[f"{path}.moe_tokens"])
        info: dict = {"experts": experts, "routed_tokens": int(tokens)}
        if tokens:
            load = tensors[f"{path}.moe_load"].float() / tokens
            info["expert_load"] = [round(float(v), 4) for v in load]
            info["router_entropy"] = round(float(tensors[f"{path}.moe_entropy"]) / tokens, 4)
            info["router_entropy_max"] = round(math.log(experts), 4)
        return info
