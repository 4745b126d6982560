"""Masked-language-model pre-training of a small k-mer BERT (the embedded base).

    lorakit lorabert pretrain --data.fasta a.fa [b.fa.gz ...] --out DIR
    lorakit lorabert pretrain --data.cpat_train --out DIR   # CPAT human, training split only

Two bases ship, both codon BERTs (k=3, stride 3, all three reading frames; see
lorakit.domains.genomics.kmer) trained on the training split of CPAT's human test set
(`stratified_split(seed=0)`: the val 10% gives the held-out MLM loss, the test 20% is
never seen); each transcript gives one token stream per frame, and ln 64 = 4.16 is a
uniform guess over codons. pretrain_log.json in each folder records the command, the
steps, the loss curve and the recipe.

plugins/lorabert/assets/base_compact/ (2 layers of width 128, 256-codon windows of
~770 nt, 456 k parameters, 1.8 MB; ~0.18 s a step on one CPU thread), made by

    python -m lorakit.plugins.lorabert.pretrain --data.cpat_train \
        --out /work/lorabert_pretrain/codon128 --k 3 --stride 3 --frames 3 --hidden 128 \
        --layers 2 --heads 4 --max-tokens 256 --batch-size 16 --steps 12000 --lr 2e-3 \
        --warmup 300 --save-every 1000 --log-every 200 --threads 1 --seed 0

(2,165 s in the background; held-out MLM loss 3.65 at the end, still falling), then copied
in. With LoRA r=8 and 2 epochs on the training split it reached validation MCC 0.928 /
AUROC 0.994, where a width-64 codon base of 3,500 steps reached 0.893 / 0.987 and a
2-layer 6-mer BERT (stride 3, one frame, 0.98 M parameters) 0.69 / 0.933.

plugins/lorabert/assets/base/ (the default; 4 layers of width 128, 512-codon windows of
~1.5 kb, enough for a typical coding region; 893 k parameters, 3.5 MB), grown from the
compact one (`--grow`: layers stacked, positions tiled; see `grow_bert`) by

    python -m lorakit.plugins.lorabert.pretrain --data.cpat_train \
        --init plugins/lorabert/assets/base_compact --grow --out DIR --layers 4 \
        --max-tokens 512 --batch-size 16 --steps 5000 --lr 1e-3 --warmup 200 \
        --save-every 500 --log-every 100 --threads 1 --seed 0

(~2.5 h on idle cycles of one core; held-out MLM loss 3.642). It was chosen over the
compact base on validation only, three seeds each (benchmarks/studies/lorabert_base_selection.py:
MCC 0.937 +- 0.010 against 0.914 +- 0.010, at 3.7x the fit time).

Masking follows BERT (Devlin et al. 2019, sec. 3.1: 15% of positions, 80% [MASK],
10% random, 10% kept) but masks spans of `k // stride + 1` consecutive tokens, as
DNABERT does for overlapping k-mers (Ji et al. 2021): a lone masked 6-mer at stride 3
is spelled out by its two neighbours, and the model would only learn to copy.
Codons (k = stride) do not overlap, so they are masked one at a time.

The loop is plain PyTorch, one file top to bottom. Every `--save-every` steps the
folder is replaced atomically (written beside it, then renamed), so whatever exists is
a complete transformers folder: config.json, model.safetensors, vocab.txt,
kmer_tokenizer.json and pretrain_log.json (command, step, losses, and `recipe`: the
commands that made it, first to last, with those of an --init folder before its own).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lorakit.domains.genomics.fasta import read_fasta
from lorakit.domains.genomics.kmer import KmerTokenizer
from lorakit.domains.genomics.kmer_bert import small_bert_config
from lorakit.errors import DataError, LoraKitError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lorakit lorabert pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data.fasta", dest="fasta", nargs="*", default=[],
                   help="unlabelled FASTA files (plain or .gz)")
    p.add_argument("--data.cpat_train", dest="cpat_train", action="store_true",
                   help="use the training split of CPAT's human test set (fetched and cached)")
    p.add_argument("--data.ambiguous", dest="ambiguous", default="reject", choices=["reject", "N"])
    p.add_argument("--out", required=True, help="output folder (a transformers BERT folder)")
    p.add_argument("--init", default=None, help="continue from this k-mer BERT folder")
    p.add_argument("--grow", action="store_true",
                   help="with --init: grow the model to --layers and --max-tokens "
                        "(layers stacked, positions tiled; see grow_bert)")
    p.add_argument("--k", type=int, default=6)
    p.add_argument("--stride", type=int, default=3)
    p.add_argument("--frames", type=int, default=1,
                   help="reading frames the tokenizer reads (3 with k=3 stride 3: codons)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=254, help="k-mers per crop (+[CLS],[SEP])")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=14000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--mask-prob", type=float, default=0.15)
    p.add_argument("--span", type=int, default=None,
                   help="masked span (default k//stride+1 for overlapping k-mers, else 1)")
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def load_sequences(args) -> tuple[list[str], list[str]]:
    """(training sequences, held-out sequences for the MLM validation loss)."""
    if args.cpat_train:
        from lorakit.domains.genomics.cpat_data import load_cpat_human
        from lorakit.domains.genomics.split import stratified_split
        records, labels = load_cpat_human()
        split = stratified_split(labels, seed=0)
        return ([records[i].seq for i in split["train"]],
                [records[i].seq for i in split["val"]])
    if not args.fasta:
        raise DataError("pretrain needs --data.fasta FILE [FILE ...] or --data.cpat_train")
    seqs = [r.seq for f in args.fasta for r in read_fasta(f, ambiguous=args.ambiguous)]
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(seqs))
    n_val = max(1, len(seqs) // 20) if len(seqs) > 20 else 0
    return [seqs[i] for i in order[n_val:]], [seqs[i] for i in order[:n_val]]


def mask_spans(ids: torch.Tensor, attn: torch.Tensor, tok: KmerTokenizer, span: int,
               prob: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of spans of `span` tokens; returns (inputs, labels with -100)."""
    real = attn.bool() & (ids != tok.cls_id) & (ids != tok.sep_id)
    starts = (torch.rand(ids.shape, generator=gen) < prob / span) & real
    masked = starts.clone()
    for s in range(1, span):
        masked[:, s:] |= starts[:, :-s]
    masked &= real
    labels = torch.where(masked, ids, torch.full_like(ids, -100))
    roll = torch.rand(ids.shape, generator=gen)
    inputs = ids.clone()
    inputs[masked & (roll < 0.8)] = tok.mask_id
    rand_pos = masked & (roll >= 0.8) & (roll < 0.9)
    n_special = 5
    inputs[rand_pos] = torch.randint(n_special, len(tok), (int(rand_pos.sum()),), generator=gen)
    return inputs, labels


def batch_of(token_lists: list[np.ndarray], idx, tok: KmerTokenizer, max_tokens: int,
             rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of random crops of `max_tokens` k-mers, [CLS] ... [SEP]."""
    crops = []
    for i in idx:
        t = token_lists[i]
        a = int(rng.integers(0, len(t) - max_tokens + 1)) if len(t) > max_tokens else 0
        crops.append([tok.cls_id, *t[a:a + max_tokens].tolist(), tok.sep_id])
    width = max(len(c) for c in crops)
    ids = torch.full((len(crops), width), tok.pad_id, dtype=torch.long)
    attn = torch.zeros((len(crops), width), dtype=torch.long)
    for r, c in enumerate(crops):
        ids[r, :len(c)] = torch.tensor(c)
        attn[r, :len(c)] = 1
    return ids, attn


def mlm_loss(model, ids, attn, labels) -> tuple[torch.Tensor, float]:
    """Cross-entropy over masked positions only: the vocabulary projection runs on ~15% of
    tokens instead of all of them."""
    hidden = model.bert(input_ids=ids, attention_mask=attn).last_hidden_state
    where = labels != -100
    logits = model.cls(hidden[where])
    target = labels[where]
    loss = torch.nn.functional.cross_entropy(logits, target)
    acc = (logits.argmax(-1) == target).float().mean().item()
    return loss, acc


def save_folder(model, tok: KmerTokenizer, out: Path, log: dict) -> None:
    """Write the folder beside `out`, then swap it in: `out` is always complete."""
    tmp = out.with_name(out.name + ".tmp")
    old = out.with_name(out.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save(tmp)
    (tmp / "pretrain_log.json").write_text(json.dumps(log, indent=1))
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def grow_bert(model, layers: int, max_positions: int):
    """A deeper, longer-window copy of a BERT for warm-started pre-training.

    Layers are stacked: new layer i starts as a copy of layer i mod L (Gong et al. 2019,
    "Efficient training of BERT by progressively stacking"). Positions beyond the old
    limit repeat the learned position embeddings of the old window, [CLS] row excluded
    (Beltagy et al. 2020, Longformer sec. 5: copy initialisation), so every position
    starts where the old model had a meaningful vector.
    """
    import copy

    from transformers import BertForMaskedLM
    old = model.config
    if layers < old.num_hidden_layers or max_positions < old.max_position_embeddings:
        raise LoraKitError(f"--grow only grows: the model has {old.num_hidden_layers} layers "
                           f"and {old.max_position_embeddings} positions; give --layers and "
                           "--max-tokens + 2 at least that")
    config = copy.deepcopy(old)
    config.num_hidden_layers = layers
    config.max_position_embeddings = max_positions
    grown = BertForMaskedLM(config)
    state = model.state_dict()
    new_state = grown.state_dict()
    for name, value in state.items():
        if ".encoder.layer." in name:
            continue
        if name.endswith("position_embeddings.weight"):
            rows = new_state[name].clone()
            n = value.shape[0]
            rows[:n] = value
            period = torch.arange(n, max_positions) - 1
            rows[n:] = value[1 + period % (n - 1)]
            new_state[name] = rows
        elif name in new_state and new_state[name].shape == value.shape:
            new_state[name] = value
    for i in range(layers):
        src = f"bert.encoder.layer.{i % old.num_hidden_layers}."
        for name, value in state.items():
            if name.startswith(src):
                new_state[f"bert.encoder.layer.{i}." + name[len(src):]] = value.clone()
    grown.load_state_dict(new_state)
    return grown


def recipe_of(folder: str | None) -> list[str]:
    """The commands that made a folder, first to last (its pretrain_log's `recipe`, or its
    one `command`); [] without a folder or for one made elsewhere."""
    path = Path(folder) / "pretrain_log.json" if folder else None
    if path is None or not path.is_file():
        return []
    log = json.loads(path.read_text())
    return log.get("recipe", [log["command"]] if "command" in log else [])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    from transformers import BertForMaskedLM

    if args.init:
        model = BertForMaskedLM.from_pretrained(args.init, use_safetensors=True)
        tok = KmerTokenizer.from_folder(args.init)
        if args.grow:
            model = grow_bert(model, args.layers, args.max_tokens + 2)
    else:
        tok = KmerTokenizer(k=args.k, stride=args.stride, frames=args.frames)
        config = small_bert_config(len(tok), hidden=args.hidden, layers=args.layers,
                                   heads=args.heads, max_positions=args.max_tokens + 2)
        model = BertForMaskedLM(config)
    span = args.span or (tok.k // tok.stride + 1 if tok.stride < tok.k else 1)
    train, held_out = load_sequences(args)
    # every frame's token stream is a training text of its own
    train_ids = [np.asarray(ids, dtype=np.int32) for s in train for ids in tok.frame_ids(s)]
    val_ids = [np.asarray(tok.ids(s), dtype=np.int32) for s in held_out]
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        frac = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    out = Path(args.out)
    command = "python -m lorakit.plugins.lorabert.pretrain " + " ".join(
        argv if argv is not None else sys.argv[1:])
    log = {"command": command, "recipe": [*recipe_of(args.init), command],
           "params": n_params, "sequences": len(train),
           "k": tok.k, "stride": tok.stride, "frames": tok.frames, "span": span,
           "history": []}
    print(f"pretrain: {len(train)} sequences ({sum(map(len, train_ids)):,} tokens), "
          f"{n_params:,} parameters, {args.steps} steps", flush=True)

    val_gen = torch.Generator()

    def validate() -> float:
        if not val_ids:
            return float("nan")
        model.eval()
        val_gen.manual_seed(1234)
        vrng = np.random.default_rng(1234)
        losses = []
        with torch.no_grad():
            for a in range(0, min(len(val_ids), 256), args.batch_size):
                idx = range(a, min(a + args.batch_size, len(val_ids)))
                ids, attn = batch_of(val_ids, idx, tok, args.max_tokens, vrng)
                inputs, labels = mask_spans(ids, attn, tok, span, args.mask_prob, val_gen)
                losses.append(mlm_loss(model, inputs, attn, labels)[0].item())
        model.train()
        return float(np.mean(losses))

    model.train()
    t0 = time.time()
    run_loss, run_acc = [], []
    for step in range(args.steps):
        idx = rng.integers(0, len(train_ids), args.batch_size)
        ids, attn = batch_of(train_ids, idx, tok, args.max_tokens, rng)
        inputs, labels = mask_spans(ids, attn, tok, span, args.mask_prob, gen)
        loss, acc = mlm_loss(model, inputs, attn, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        run_loss.append(loss.item())
        run_acc.append(acc)
        done = step + 1
        if done % args.log_every == 0 or done == args.steps:
            entry = {"step": done, "loss": float(np.mean(run_loss)),
                     "masked_acc": float(np.mean(run_acc)), "lr": sched.get_last_lr()[0],
                     "seconds": round(time.time() - t0, 1)}
            run_loss, run_acc = [], []
            if done % args.save_every == 0 or done == args.steps:
                entry["val_loss"] = validate()
                log["history"].append(entry)
                log["step"] = done
                save_folder(model, tok, out, log)
            else:
                log["history"].append(entry)
            print(json.dumps(entry), flush=True)
    return log


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
