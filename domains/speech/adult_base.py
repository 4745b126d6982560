"""The embedded base: Whisper tiny.en taught the 3 s context on adult voices.

Whisper was pretrained on 30 s windows of (mostly adult) speech. Cut to a 3 s context,
tiny.en still hears the words but its decoder never sees the window end and loops
("Run there. Run there. Run there."): zero-shot WER ~1 on adult and child clips alike.
With a base that bad on adults, the benchmark's adult test set cannot show forgetting:
every method only gets better on it. So the embedded base is tiny.en after a short
full fine-tuning at the short context on adult espeak-ng voices whose pitch lies below
every adult_test speaker's (`build_adult_set`): the paper's starting point, a model good
on adult speech and poor on children's, at a size that trains on two CPU cores.

Built once (about 3 minutes on one thread) into the cache, float32, the file
`whisper.load_model` reads:

    $LORAKIT_CACHE/whisper/tiny.en-ctx<n>-adult-<settings hash>.pt

`python -m lorakit.domains.speech.adult_base` builds it ahead of time (the set-up does).
A user's own checkpoint (`--model.checkpoint`) is used as it is.
"""
from __future__ import annotations

import argparse
import itertools
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from lorakit.domains.downloads import cache_dir, sha256
from lorakit.domains.speech.manifest import read_manifest
from lorakit.domains.speech.pretrained import tiny_en_checkpoint
from lorakit.domains.speech.synthetic import AdultSetConfig, build_adult_set, settings_id
from lorakit.domains.speech.teacher_forcing import cross_entropy, transcription_tokenizer
from lorakit.domains.speech.utterances import UtteranceDataset, collate
from lorakit.domains.speech.whisper_model import SAMPLE_RATE, context_samples, load_whisper


@dataclass(frozen=True)
class BaseRecipe:
    """Full fine-tuning of tiny.en at `n_audio_ctx` on the adult set."""
    n_audio_ctx: int = 150
    steps: int = 100
    batch_size: int = 16
    lr: float = 3e-5
    seed: int = 0
    adult_set: AdultSetConfig = AdultSetConfig()


def base_path(recipe: BaseRecipe) -> Path:
    """Keyed like the corpora (`settings_id`): a change to the recipe, the adult set, the
    vocabulary or the generator gives a new file."""
    return (cache_dir() / "whisper"
            / f"tiny.en-ctx{recipe.n_audio_ctx}-adult-{settings_id(recipe)}.pt")


def embedded_base(n_audio_ctx: int = 150, threads: int | None = None) -> Path:
    """Path of the embedded base for an encoder context of `n_audio_ctx`, built on first use."""
    recipe = BaseRecipe(n_audio_ctx=n_audio_ctx)
    out = base_path(recipe)
    if not out.is_file():
        build_base(recipe, out, threads)
    return out


def build_base(recipe: BaseRecipe, out: Path, threads: int | None = None) -> Path:
    """Fine-tune tiny.en by `recipe` and save it to `out` (written whole or not at all)."""
    source = tiny_en_checkpoint()
    manifest = build_adult_set(recipe.adult_set) / "adult_train.jsonl"
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(recipe.seed)
            model = load_whisper(str(source), recipe.n_audio_ctx).requires_grad_(True).train()
            tokenizer = transcription_tokenizer(model, "en")
            samples = context_samples(recipe.n_audio_ctx)
            data = UtteranceDataset(read_manifest(manifest), "adult_train", samples)
            loader = DataLoader(data, batch_size=recipe.batch_size, shuffle=True,
                                collate_fn=collate, drop_last=True,
                                generator=torch.Generator().manual_seed(recipe.seed))
            epochs = (batch for _ in itertools.count() for batch in loader)
            optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
            losses = []
            bar = tqdm(itertools.islice(epochs, recipe.steps), total=recipe.steps,
                       desc="tiny.en: 3 s context on adult voices", unit="step")
            for batch in bar:
                loss = cross_entropy(model, tokenizer, batch["audio"], batch["text"])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    finally:
        torch.set_num_threads(previous)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial")
    torch.save({"dims": asdict(model.dims),
                "model_state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "lorakit_recipe": {**asdict(recipe), "source": source.name,
                                   "source_sha256": sha256(source),
                                   "first_loss": losses[0], "last_loss": losses[-1],
                                   "clip_seconds": samples / SAMPLE_RATE}}, tmp)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m lorakit.domains.speech.adult_base",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--n-audio-ctx", type=int, default=150, help="encoder positions (50 a second)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    print(embedded_base(args.n_audio_ctx, args.threads))


if __name__ == "__main__":
    main()
