"""`ConditioningDataModule`: what a guidance-distillation batch holds.

Every batch is a dict with the conditioning and the noise ε that makes x_t:

    class_labels (B,) int64        or   encoder_hidden_states (B, L, D)
                                        (+ uncond_encoder_hidden_states (1, L, D))
    noise (B, C, H, W)             ε of x_t = sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ε
    images (B, C, H, W), optional  real x_0 in [-1, 1]; without them the module
                                   samples x_0 from the teacher

Sources:
- ``digits``: scikit-learn's digits at 16x16 with their labels (the embedded
  default); validation on the held-out 20%.
- ``labels``: class labels only, uniform over ``num_classes`` (data-free).
- ``embeddings``: prompt embeddings from a ``.safetensors`` file with
  ``encoder_hidden_states`` (N, L, D) and optionally ``uncond_encoder_hidden_states``
  (1, L, D), the embedding of the empty prompt (zeros when missing). Compute them
  once with the pipeline's text encoder.

Training noise is fresh every time an item is drawn (from the global RNG, which
`seed_everything` seeds); validation and predict noise is seeded per item, so those
batches are the same every run.
"""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lorakit.errors import DataError

SOURCES = ("digits", "labels", "embeddings")


class ConditioningDataset(Dataset):
    """Conditioning items with seeded noise; `images` when there are real ones."""

    def __init__(self, cond: torch.Tensor, images: torch.Tensor | None,
                 noise_shape: tuple[int, ...] | None, seed: int | None, key: str) -> None:
        self.cond, self.images = cond, images
        self.noise_shape, self.seed, self.key = noise_shape, seed, key

    def __len__(self) -> int:
        return len(self.cond)

    def __getitem__(self, i: int) -> dict:
        item = {self.key: self.cond[i]}
        if self.images is not None:
            item["images"] = self.images[i]
        if self.noise_shape is not None:
            gen = None if self.seed is None else torch.Generator().manual_seed(
                self.seed + 104729 * i)
            item["noise"] = torch.randn(self.noise_shape, generator=gen)
        return item


class ConditioningDataModule(pl.LightningDataModule):
    """Conditioning (+ noise, + real images when there are) for lora-distill.

    Args:
        source: "digits", "labels" or "embeddings" (see the module docstring).
        batch_size: items per batch.
        num_classes: classes of the "labels" source (the null class excluded).
        sample_shape: (C, H, W) of the noise for "labels"/"embeddings" (default: the
            module draws it from the UNet's own sample size).
        embeddings: the .safetensors file of the "embeddings" source.
        epoch_size: items per training epoch of "labels"/"embeddings".
        val_size: validation items.
        predict_per_class: samples per class (or per prompt) in predict grids.
        seed: of labels and noise.
        num_workers: DataLoader workers.
    """

    def __init__(self, source: str = "digits", batch_size: int = 64, num_classes: int = 10,
                 sample_shape: list[int] | None = None, embeddings: str | None = None,
                 epoch_size: int = 4096, val_size: int = 256, predict_per_class: int = 10,
                 seed: int = 0, num_workers: int = 0) -> None:
        super().__init__()
        if source not in SOURCES:
            raise DataError(f"ConditioningDataModule.source must be one of {SOURCES}, "
                            f"got {source!r}")
        if source == "embeddings" and not embeddings:
            raise DataError("source 'embeddings' needs --data.embeddings FILE.safetensors "
                            "(encoder_hidden_states (N, L, D), optional "
                            "uncond_encoder_hidden_states (1, L, D))")
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.source, self.batch_size, self.num_classes = source, batch_size, num_classes
        self.sample_shape = tuple(sample_shape) if sample_shape else None
        self.embeddings, self.epoch_size, self.val_size = embeddings, epoch_size, val_size
        self.predict_per_class, self.seed, self.num_workers = predict_per_class, seed, num_workers
        self.uncond: torch.Tensor | None = None
        self._sets: dict[str, ConditioningDataset] = {}

    # --- the sources ------------------------------------------------------------------
    def _labels(self, n: int, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randint(0, self.num_classes, (n,), generator=gen)

    def _read_embeddings(self) -> torch.Tensor:
        from safetensors import safe_open

        path = Path(self.embeddings)
        if not path.is_file():
            raise DataError(f"prompt embeddings file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                keys = set(f.keys())
                if "encoder_hidden_states" not in keys:
                    raise DataError(f"{path} has no 'encoder_hidden_states' tensor (has "
                                    f"{sorted(keys)})")
                emb = f.get_tensor("encoder_hidden_states")
                if "uncond_encoder_hidden_states" in keys:
                    self.uncond = f.get_tensor("uncond_encoder_hidden_states")
        except DataError:
            raise
        except Exception as err:
            raise DataError(f"{path} is not a readable safetensors file ({err})") from None
        if emb.dim() != 3:
            raise DataError(f"{path}: encoder_hidden_states must be (N, L, D), got "
                            f"{tuple(emb.shape)}")
        if self.uncond is None:
            self.uncond = torch.zeros_like(emb[:1])
        return emb

    def _build(self, split: str) -> ConditioningDataset:
        seed = None if split == "fit" else self.seed + {"val": 1, "predict": 2}[split]
        if self.source == "digits":
            from lorakit.domains.imaging.digits import load_digits

            if split == "predict":
                labels = torch.arange(10).repeat_interleave(self.predict_per_class)
                return ConditioningDataset(labels, None, (1, 16, 16), seed, "class_labels")
            data = load_digits("train" if split == "fit" else "test")
            return ConditioningDataset(data.labels, data.images, tuple(data.images.shape[1:]),
                                       seed, "class_labels")
        if self.source == "labels":
            if split == "predict":
                cond = torch.arange(self.num_classes).repeat_interleave(self.predict_per_class)
            else:
                n = self.epoch_size if split == "fit" else self.val_size
                cond = self._labels(n, self.seed + (split == "val"))
            return ConditioningDataset(cond, None, self.sample_shape, seed, "class_labels")
        emb = self._read_embeddings()
        if split == "predict":
            cond = emb.repeat_interleave(self.predict_per_class, dim=0)
        else:
            n = self.epoch_size if split == "fit" else min(self.val_size, len(emb))
            gen = torch.Generator().manual_seed(self.seed + (split == "val"))
            idx = torch.randint(0, len(emb), (n,), generator=gen)
            cond = emb[idx]
        return ConditioningDataset(cond, None, self.sample_shape, seed, "encoder_hidden_states")

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("fit", "val"), "validate": ("val",), "test": ("val",),
                  "predict": ("predict",)}.get(stage or "fit", ("fit", "val", "predict"))
        for split in wanted:
            if split not in self._sets:
                self._sets[split] = self._build(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self._sets:
            self._sets[split] = self._build(split)
        return DataLoader(self._sets[split], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, collate_fn=self._collate,
                          drop_last=False)

    def _collate(self, items: list[dict]) -> dict:
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        if self.uncond is not None and "encoder_hidden_states" in batch:
            batch["uncond_encoder_hidden_states"] = self.uncond
        return batch

    def train_dataloader(self) -> DataLoader:
        return self._loader("fit", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)
