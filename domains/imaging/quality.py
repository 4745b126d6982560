"""Sample quality of generated digits: a classifier's accuracy and a Fréchet distance.

A small CNN trained on the real digits (train split, 80%) scores generated images:

- class accuracy: how often it reads the class a sample was generated for;
- Fréchet distance in its 64-d hidden-layer feature space (FID's recipe, Heusel et
  al. 2017, with this classifier in place of Inception) between generated samples
  and the real digits: ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½).

The weights ship as `digits_classifier.safetensors`; `load_classifier()` retrains
them (deterministically, in seconds) when the file is missing:

    python -m lorakit.domains.imaging.quality --out domains/imaging/digits_classifier.safetensors
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .digits import NUM_CLASSES, load_digits

WEIGHTS = Path(__file__).with_name("digits_classifier.safetensors")


class DigitClassifier(nn.Module):
    """16x16x1 -> 64-d features -> 10 logits (three 3x3 convs and a hidden layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 4 * 4, 64), nn.ReLU())
        self.head = nn.Linear(64, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random translations of up to one pixel: a little robustness to sampler jitter."""
    dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train_classifier(epochs: int = 30, seed: int = 0) -> DigitClassifier:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    data = load_digits("train")
    model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    n = len(data)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model(_shift(data.images[idx], gen)), data.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def load_classifier(path=WEIGHTS) -> DigitClassifier:
    from safetensors.torch import load_file

    model = DigitClassifier()
    if Path(path).is_file():
        model.load_state_dict(load_file(str(path)))
        return model.eval().requires_grad_(False)
    return train_classifier().requires_grad_(False)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets."""
    a, b = a.double(), b.double()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = torch.cov(a.T), torch.cov(b.T)
    # tr (Σ₁Σ₂)^½ = Σ sqrt(eig(Σ₁^½ Σ₂ Σ₁^½)), a symmetric PSD matrix
    e1, v1 = torch.linalg.eigh(s1)
    r1 = (v1 * e1.clamp(min=0).sqrt()) @ v1.T
    mid = torch.linalg.eigvalsh(r1 @ s2 @ r1).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * mid)


@dataclass
class Quality:
    accuracy: float  # percent
    frechet: float
    n: int


class DigitScorer:
    """Scores generated digits against the real ones; reuse it across evaluations."""

    def __init__(self, classifier: DigitClassifier | None = None) -> None:
        self.classifier = classifier or load_classifier()
        with torch.no_grad():
            self.real_features = self.classifier.features(load_digits("all").images)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> Quality:
        images = images.float().cpu().clamp(-1, 1)
        feats = self.classifier.features(images)
        pred = self.classifier.head(feats).argmax(1)
        acc = 100.0 * float((pred == labels.cpu()).float().mean())
        return Quality(accuracy=acc, frechet=frechet_distance(feats, self.real_features),
                       n=len(labels))


@torch.no_grad()
def held_out_accuracy(model: DigitClassifier) -> float:
    data = load_digits("test")
    return 100.0 * float((model(data.images).argmax(1) == data.labels).float().mean())


def main(argv: list[str] | None = None) -> None:
    from safetensors.torch import save_file

    p = argparse.ArgumentParser(description="train the digits classifier used for scoring")
    p.add_argument("--out", type=Path, default=WEIGHTS)
    p.add_argument("--epochs", type=int, default=30)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = train_classifier(args.epochs)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out))
    print(f"held-out accuracy {held_out_accuracy(model):.2f}% -> {args.out}")


if __name__ == "__main__":
    main()
