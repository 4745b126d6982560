"""`SceneDataModule`: one target scene's images, its pair graph, its ground truth if any.

With `images` a folder, its photos (resized and centre-cropped to `size`); without it,
a held-out synthetic target scene from `lorakit.domains.geometry`, so `lorakit lora3d
fit` runs with no data at all; `SceneDataModule.of(tensor)` holds images already in
memory (what `fit_scene` uses). Training batches are lists of pairs (i, j) of the graph;
the module turns them into images and labels. Prediction yields the whole scene once.
`truth` (synthetic scenes, or given to `of`) is only read by labels='oracle'.
"""
from __future__ import annotations

from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lorakit.domains.geometry.images import read_folder
from lorakit.errors import LoraKitError

from .inference import make_pairs


@dataclass
class SceneTruth:
    """Ground truth of a scene: world points, their validity, cameras (None: recovered
    from the points)."""
    pts3d: torch.Tensor                 # (n,H,W,3) world
    valid: torch.Tensor | None = None   # (n,H,W) bool
    poses: torch.Tensor | None = None   # (n,4,4) camera-to-world


class _Pairs(Dataset):
    def __init__(self, edges, repeats: int) -> None:
        self.edges = list(edges) * max(1, repeats)

    def __len__(self) -> int:
        return len(self.edges)

    def __getitem__(self, k):
        return torch.tensor(self.edges[k])


class _Scene(Dataset):
    def __init__(self, images, names) -> None:
        self.images, self.names = images, names

    def __len__(self) -> int:
        return 1

    def __getitem__(self, _):
        return {"images": self.images, "names": self.names}


def _collate_scene(items):
    return items[0]


class SceneDataModule(pl.LightningDataModule):
    """One scene.

    Args:
        images: folder of one scene's photos; None for a synthetic degraded scene.
        size: the model's input size (images are resized and centre-cropped to it).
        graph: pair graph, 'complete' (every ordered pair) or 'swin' (sliding window).
        window: sliding-window size for graph='swin'.
        batch_pairs: pairs per fine-tuning step.
        max_images: use at most this many photos of the folder (in name order).
        allow_mixed_sizes: resize photos of different sizes instead of refusing them.
        scene_seed: seed of the synthetic scene (when images is None).
        n_views: views of the synthetic scene.
        overlap: view overlap of the synthetic camera path, in [0, 1].
    """

    def __init__(self, images: str | None = None, size: int = 64, graph: str = "complete",
                 window: int = 2, batch_pairs: int = 6, max_images: int | None = 12,
                 allow_mixed_sizes: bool = False, scene_seed: int = 0, n_views: int = 6,
                 overlap: float = 0.75) -> None:
        super().__init__()
        if batch_pairs < 1:
            raise LoraKitError(f"batch_pairs must be >= 1, got {batch_pairs}")
        self.folder = images
        self.size = size
        self.graph, self.window = graph, window
        self.batch_pairs = batch_pairs
        self.max_images = max_images
        self.allow_mixed_sizes = allow_mixed_sizes
        self.scene_seed, self.n_views, self.overlap = scene_seed, n_views, overlap
        self.images: torch.Tensor | None = None
        self.names: list[str] = []
        self.truth: SceneTruth | None = None
        self.edges: list[tuple[int, int]] = []

    @classmethod
    def of(cls, images: torch.Tensor, truth: SceneTruth | None = None,
           names: list[str] | None = None, **kwargs) -> SceneDataModule:
        """A scene already in memory: images (n,H,W,3) in [0,1]."""
        if images.dim() != 4 or images.shape[-1] != 3:
            raise LoraKitError(f"scene images must be (n,H,W,3), got {tuple(images.shape)}")
        dm = cls(size=images.shape[1], **kwargs)
        dm.images = images.detach().float().cpu()
        dm.names = names or [f"view{k}" for k in range(images.shape[0])]
        dm.truth = truth
        return dm

    def setup(self, stage: str | None = None) -> None:
        if self.images is None and self.folder is not None:
            self.images, self.names = read_folder(self.folder, self.size,
                                                  self.allow_mixed_sizes, self.max_images)
        elif self.images is None:
            from lorakit.domains.geometry.scenes import make_target_scene
            views = make_target_scene(self.scene_seed, n_views=self.n_views, size=self.size,
                                      overlap=self.overlap)
            self.images, self.truth = views.images, SceneTruth(views.pts3d, views.valid,
                                                               views.poses)
            self.names = [f"synthetic_{self.scene_seed}_view{k}" for k in range(self.n_views)]
        self.edges = make_pairs(self.images.shape[0], self.graph, self.window)

    def train_dataloader(self) -> DataLoader:
        repeats = max(1, 64 // max(len(self.edges), 1))
        return DataLoader(_Pairs(self.edges, repeats), batch_size=self.batch_pairs,
                          shuffle=True, drop_last=False, num_workers=0)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(_Scene(self.images, self.names), batch_size=1,
                          collate_fn=_collate_scene)
