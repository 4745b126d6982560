"""`AdapterModule`: the Lightning base class every plugin's training loop subclasses.

A subclass builds its frozen base model, calls `self.attach_adapters(model, config)`
in `__init__`, and writes its own `training_step` / `validation_step`. This class
then gives it, without further code:

- an optimizer over the adapter parameters only, one param group per kind
  ("lora", "lambda" without weight decay, "full" for modules_to_save);
- trainable / total parameter counts logged when fitting starts;
- checkpoints that hold the adapters and training state only (the frozen base is
  rebuilt from its own checkpoint, so a checkpoint is megabytes, not gigabytes),
  plus the RNG states, so a resumed run continues exactly where it stopped;
- the adapter file at the end of `fit`, on rank zero only: `adapter.safetensors` in
  `output_folder()` (below), with the subclass's `adapter_metadata()` in its header;
  a subclass that writes more files beside it (a sparsity report, an export in
  another library's layout) does so in `on_adapter_saved(path)`;
- the methods' training hooks, generic over the variant protocol: gradients changed
  before each optimizer step (`on_before_optimizer_step` → `adapters.before_optimizer_step()`,
  ALLoRA), a perturbed second forward/backward per step when an active method asks for
  one (`optimizer_step` runs Lightning's closure twice around `adapters.perturbed()`,
  LoRA-GGPO);
- the methods' extra losses through one channel (`adapters.loss_terms`), added to the
  loss `training_step` returns and logged as `train/<adapter>/<term>`, in one place: every
  subclass's `training_step` is wrapped (`__init_subclass__`), so none can forget a term.
  A mixture's load balance needs nothing from the subclass (logged with each router's
  per-expert load and entropy, `moe/<adapter>/...`); S2-LoRA's L1 joins the loss when
  `l1_loss` is not 0; terms on the outputs (BA-LoRA) need the outputs, which the step
  hands in with `output_regularisers(outputs, run_base)` (a step that does not, while such
  a method is active, is an error). `training_context(batch)` is the context the step and
  its terms run in (LoRAMoE's row types);
- nothing that breaks DDP/FSDP or mixed precision: it is a plain LightningModule.

Why the perturbed pass lives in `optimizer_step` and not in a manual-optimization loop:
Lightning hands `optimizer_step` a closure that runs the subclass's own `training_step`
and backward, so calling it once clean and once perturbed gives the second pass without
the subclass writing anything, keeps automatic optimization (precision plugins, gradient
clipping, DDP, any optimizer) and runs `on_before_optimizer_step` once, after both
passes. The step's gradients are the perturbed pass's (the closure zeroes them before
each backward); what `training_step` logs is logged for both passes. Gradient
accumulation would mix clean and perturbed gradients, so it is refused for such methods.

One output-folder rule for every plugin: `output_dir` when given, else the run's own
folder under `--trainer.default_root_dir` (the logger's version folder when the logger
has one, `trainer.log_dir`; else `default_root_dir` itself).
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import random
from collections.abc import Mapping
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from ..adapters import Adapters, attach
from ..config import LoRAConfig
from ..errors import LoraKitError

ADAPTER_KEY = "lorakit_adapters"
ADAPTER_FILE = "adapter.safetensors"


def routing_summary(stats: dict[str, dict]) -> dict[str, float]:
    """Mean router entropy and mean load per expert index over the modules of one adapter
    (`Adapters.routing_stats`), for logging."""
    out: dict[str, float] = {}
    entropies = [float(s["entropy"]) for s in stats.values() if "entropy" in s]
    if entropies:
        out["entropy"] = sum(entropies) / len(entropies)
    loads: dict[int, list[float]] = {}
    for s in stats.values():
        for i, v in enumerate(s.get("load", [])):
            loads.setdefault(i, []).append(float(v))
    out.update({f"load_e{i}": sum(v) / len(v) for i, v in loads.items()})
    return out


def _adding_loss_terms(step):
    """`step` (a subclass's training_step), run in `training_context(batch)`, its loss plus
    the methods' terms; a subclass's `super().training_step(...)` adds nothing twice."""
    @functools.wraps(step)
    def training_step(self, *args, **kwargs):
        if getattr(self, "_in_training_step", False):
            return step(self, *args, **kwargs)
        self._in_training_step, self._output_terms = True, None
        try:
            with self.training_context(args[0] if args else kwargs.get("batch")):
                return self.add_loss_terms(step(self, *args, **kwargs))
        finally:
            self._in_training_step = False
    training_step._adds_loss_terms = True
    return training_step


class AdapterModule(pl.LightningModule):
    """Base for adapter training: adapter-only optimizer, checkpoints and resume.

    Args:
        lr: learning rate of the adapter parameters.
        weight_decay: AdamW weight decay (never applied to S2-LoRA's λ, which has an L1 penalty,
            nor to L4Q's step sizes and offsets).
        optimizer: "adamw", "adam" or "sgd".
        output_dir: where the adapter and the run's other files are written; None: the
            run's folder under --trainer.default_root_dir (trainer.log_dir).
        l1_loss: coefficient of S2-LoRA's L1 term l1_loss·Σ|λ| added to the training loss
            (0: none, as when the L1 is applied as a proximal step, `adapters.shrink`).
    """

    def __init__(self, lr: float = 1e-3, weight_decay: float = 0.0,
                 optimizer: str = "adamw", output_dir: str | None = None,
                 l1_loss: float = 0.0) -> None:
        super().__init__()
        self.l1_loss = l1_loss
        self._output_terms: dict[str, torch.Tensor] | None = None
        self._in_training_step = False
        if optimizer not in ("adamw", "adam", "sgd"):
            raise LoraKitError(f"optimizer must be 'adamw', 'adam' or 'sgd', got {optimizer!r}")
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer_name = optimizer
        self.output_dir = output_dir
        self.adapters: Adapters | None = None
        # the checkpoint holds adapters only; the frozen base comes from its own file
        self.strict_loading = False

    def attach_adapters(self, model: nn.Module, config: LoRAConfig | Adapters,
                        name: str = "default") -> Adapters:
        """Attach adapter `name` to `model`; a second call adds another to the same handle.
        `config` may be the handle of adapters already on `model` (an init that decomposes
        the base first, as LoftQ and LQ-LoRA do): the module trains those."""
        if isinstance(config, Adapters):
            if config.model is not model:
                raise LoraKitError("attach_adapters: the adapters given sit on another model")
            self.adapters = config
            return config
        self.adapters = attach(model, config, name)
        return self.adapters

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Adapter parameters plus anything a subclass leaves trainable outside them."""
        return [p for p in self.parameters() if p.requires_grad]

    # --- optimizer ----------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        groups = []
        seen: set[int] = set()
        if self.adapters is not None:
            for kind, params in self.adapters.param_groups().items():
                decay = 0.0 if kind in ("lambda", "quant") else self.weight_decay
                groups.append({"params": params, "weight_decay": decay, "name": kind})
                seen.update(id(p) for p in params)
        rest = [p for p in self.trainable_parameters() if id(p) not in seen]
        if rest:
            groups.append({"params": rest, "weight_decay": self.weight_decay, "name": "other"})
        if not groups:
            raise LoraKitError(f"{type(self).__name__} has no trainable parameters")
        return groups

    def configure_optimizers(self):
        groups = self.param_groups()
        if self.optimizer_name == "adamw":
            return torch.optim.AdamW(groups, lr=self.lr)
        if self.optimizer_name == "adam":
            return torch.optim.Adam(groups, lr=self.lr)
        return torch.optim.SGD(groups, lr=self.lr, momentum=0.9)

    def on_fit_start(self) -> None:
        trainable = sum(p.numel() for p in self.trainable_parameters())
        total = sum(p.numel() for p in self.parameters())
        rank_zero_info(f"lorakit: {trainable:,} trainable of {total:,} parameters "
                       f"({100 * trainable / max(total, 1):.3f}%)")
        quantized = [layer.base for layer in (self.adapters.layers.values() if self.adapters
                                              else ()) if layer.kind.quantized]
        if quantized:    # packed codes count as parameters above: say what they hold
            specs = ", ".join(sorted({str(base.spec) for base in quantized}))
            fp32 = sum(4 * base.in_features * base.out_features for base in quantized)
            rank_zero_info(f"lorakit: {len(quantized)} adapted modules on a quantized base "
                           f"({specs}): {sum(b.nbytes() for b in quantized) / 2**20:.2f} MiB of "
                           f"weights, {fp32 / 2**20:.2f} MiB in float32")
        if self.trainer.is_global_zero:  # self.log() is not allowed in on_fit_start
            for logger in self.loggers:
                logger.log_metrics({"params/trainable": trainable, "params/total": total}, step=0)
        if (self.adapters is not None and self.adapters.perturbs
                and self.trainer.accumulate_grad_batches > 1):
            raise LoraKitError("an active adapter's method (LoRA-GGPO) takes a perturbed second "
                               "pass per optimizer step, which gradient accumulation would mix "
                               "with clean gradients: set accumulate_grad_batches to 1")

    # --- the methods' training hooks ---------------------------------------------------
    def on_before_optimizer_step(self, optimizer) -> None:
        """The methods' gradient changes (ALLoRA), after AMP unscaling and accumulation."""
        if self.adapters is not None:
            self.adapters.before_optimizer_step()

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """One step; when an active method perturbs (LoRA-GGPO), the closure (training_step
        + backward) runs again inside `adapters.perturbed()` and the optimizer steps with
        those gradients."""
        if self.adapters is None or optimizer_closure is None or not self.adapters.perturbs:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)

        def clean_then_perturbed():
            loss = optimizer_closure()
            with self.adapters.perturbed():
                optimizer_closure()
            return loss
        optimizer.step(closure=clean_then_perturbed)

    # --- the methods' extra losses: one channel ----------------------------------------
    def __init_subclass__(cls, **kwargs) -> None:
        """Wrap a subclass's `training_step` (its own or a mixin's) so its loss gets the
        methods' terms; one already wrapped higher up is left as it is."""
        super().__init_subclass__(**kwargs)
        step = getattr(cls, "training_step", None)
        if (step is not None and step is not pl.LightningModule.training_step
                and not getattr(step, "_adds_loss_terms", False)):
            cls.training_step = _adding_loss_terms(step)

    def training_context(self, batch):
        """The context a training step and its loss terms run in (a mixture's row types,
        `adapters.row_types`, which LoRAMoE's balance reads); none by default."""
        return contextlib.nullcontext()

    def output_regularisers(self, outputs: torch.Tensor, run_base,
                            mask: torch.Tensor | None = None) -> torch.Tensor:
        """Hand this step's outputs to the methods with loss terms on them (BA-LoRA): the
        terms join the step's loss after `training_step` returns (do not add them yourself)
        and are logged as `train/<adapter>/<term>`; returns their sum, to look at.

        `run_base()` recomputes the outputs for the same batch; it runs under
        `with adapters.disabled():` and without gradients, so the base is this very model
        with its adapters off (no copy). Zero, and `run_base` never called, without such
        methods."""
        if self.adapters is None or not self.adapters.output_regularised:
            return outputs.new_zeros(())
        with torch.no_grad(), self.adapters.disabled():
            base_outputs = run_base()
        terms = self.adapters.regularisers(outputs, base_outputs, mask)
        self._output_terms = terms
        return torch.stack(list(terms.values())).sum()

    def add_loss_terms(self, out):
        """`out` (a training step's loss, or a dict with "loss") plus every active method's
        terms (`adapters.loss_terms`), each logged as `train/<adapter>/<term>`. Called once
        per step by the wrapped `training_step`; manual optimization gets `out` back as is."""
        output_terms, self._output_terms = self._output_terms, None
        if self.adapters is None or not self.adapters.names or not self.automatic_optimization:
            return out
        loss = out.get("loss") if isinstance(out, Mapping) else out
        if loss is None:
            return out
        if self.adapters.output_regularised and output_terms is None:
            raise LoraKitError(
                f"{type(self).__name__}.training_step: an active adapter's method (BA-LoRA) has "
                "loss terms on the model's outputs, and the step never handed them in: call "
                "self.output_regularisers(outputs, run_base) in training_step")
        terms = self.adapters.loss_terms(l1=self.l1_loss)
        terms.update(output_terms or {})
        if not terms:
            return out
        if self._trainer is not None:
            for name, value in terms.items():
                self.log(f"train/{name}", value.detach())
            self._log_routing_stats()
        total = loss + torch.stack([v.to(loss.device) for v in terms.values()]).sum()
        return {**out, "loss": total} if isinstance(out, Mapping) else total

    def _log_routing_stats(self) -> None:
        for name in self.adapters.active:
            for key, value in routing_summary(self.adapters.routing_stats(name)).items():
                self.log(f"moe/{name}/{key}", value)

    def routing_losses(self) -> torch.Tensor:
        """The mixtures' auxiliary losses of the last forward (load balance, LoRAMoE's
        localized balancing), each logged as `moe/<adapter>/<term>`, with the router's
        entropy and per-expert load (`moe/<adapter>/entropy`, `moe/<adapter>/load_e<i>`,
        means over modules), to look at: the training step's loss gets them already
        (`add_loss_terms`). Zero without mixtures."""
        if self.adapters is None:
            return torch.zeros(())
        terms = self.adapters.routing_terms()
        if self._trainer is not None:
            for name, value in terms.items():
                self.log(f"moe/{name}", value.detach())
            self._log_routing_stats()
        return torch.stack(list(terms.values())).sum() if terms else torch.zeros(())

    # --- the adapter file at the end of fit ------------------------------------------
    def output_folder(self) -> Path:
        """`output_dir` when given, else the run's folder: trainer.log_dir (the logger's
        version folder), or trainer.default_root_dir when there is no logger.

        Call it on every rank: trainer.log_dir is a collective under DDP."""
        if self.output_dir:
            return Path(self.output_dir)
        if self._trainer is None:
            raise LoraKitError(f"{type(self).__name__} is not attached to a Trainer and has "
                               "no output_dir: pass output_dir (or a folder) to say where "
                               "files go")
        return Path(self.trainer.log_dir or self.trainer.default_root_dir)

    def adapter_metadata(self) -> dict:
        """What the subclass adds to the adapter file's header (`extra`): JSON-able values."""
        return {}

    def on_adapter_saved(self, path: Path) -> None:
        """Called after `path` (the adapter file) is written: write files that go beside it."""

    def save_adapter(self, folder: str | Path | None = None) -> Path:
        """Write `adapter.safetensors` into `folder` (default: `output_folder()`), then call
        `on_adapter_saved`. A merged adapter is saved unmerged and merged again after."""
        if self.adapters is None or not self.adapters.names:
            raise LoraKitError(f"{type(self).__name__} has no adapters to save (trained in "
                               "full or with a frozen encoder)")
        path = Path(folder if folder is not None else self.output_folder()) / ADAPTER_FILE
        merged = self.adapters.merged
        if merged:
            self.adapters.unmerge()
        try:
            self.adapters.save(path, self.adapter_metadata())
        finally:
            if merged:
                self.adapters.merge()
        self.on_adapter_saved(path)
        return path

    def on_fit_end(self) -> None:
        """Save the adapter on rank zero (after callbacks such as AdapterEMA handed over)."""
        if self.adapters is None or not self.adapters.names:
            return
        folder = self.output_folder()   # every rank: a collective under DDP
        if self.trainer.is_global_zero:
            path = self.save_adapter(folder)
            rank_zero_info(f"lorakit: adapter ({path.stat().st_size / 1024:.1f} KB, "
                           f"{self.adapters.trainable_count():,} trainable parameters) "
                           f"written to {path}")

    # --- checkpoints: adapters and training state only ------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps: every trainable tensor under its module path, and the
        tensors an adapter method keeps fixed (FFA-LoRA's random A), without which the trained
        ones mean nothing."""
        keep = {id(p) for p in self.trainable_parameters()}
        if self.adapters is not None:
            keep |= {id(t) for n in self.adapters.names
                     for _, t in self.adapters.named_parameters(n)}
        tensors = itertools.chain(self.named_parameters(), self.named_buffers())
        return {n: t.detach().cpu().clone() for n, t in tensors if id(t) in keep}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = self.trainable_state()
        if self.adapters is not None:
            checkpoint[ADAPTER_KEY] = {
                name: {"config": config.to_dict(), "fingerprint": self.adapters.fingerprint(name)}
                for name, config in self.adapters.configs.items()}
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        # plain tensors and numbers only, so Lightning's weights_only loading accepts them
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                      float(gauss)],
            "python": random.getstate()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        expected = set(self.trainable_state())
        missing = sorted(expected - set(checkpoint.get("state_dict", {})))
        if missing:
            raise LoraKitError(
                f"checkpoint does not hold the adapters of this {type(self).__name__} "
                f"(missing {missing[:3]}): was it written with another config or base model?")
        rng = checkpoint.get("rng_states")
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            kind, keys, pos, has_gauss, gauss = rng["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
            random.setstate(rng["python"])
