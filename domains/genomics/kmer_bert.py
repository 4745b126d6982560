"""k-mer BERT folders: build a small one, load one from disk with clear errors.

A folder is what transformers' `save_pretrained` writes (config.json,
model.safetensors) plus the k-mer tokenizer's vocab.txt and kmer_tokenizer.json, so
a DNABERT-style folder a user already has loads the same way. Pickled weights
(pytorch_model.bin) are refused: nothing is unpickled.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from lorakit.errors import CheckpointError

from .kmer import KmerTokenizer


def small_bert_config(vocab_size: int, hidden: int = 128, layers: int = 4, heads: int = 4,
                      max_positions: int = 512):
    """A tiny BERT for CPU: attention dropout 0 (0.1 makes CPU training ~3x slower)."""
    from transformers import BertConfig
    return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, intermediate_size=4 * hidden,
                      max_position_embeddings=max_positions, type_vocab_size=1,
                      attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.1,
                      pad_token_id=0)


def check_folder(folder) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"pretrained model folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} has no config.json: it is not a transformers model "
                              "folder (save one with model.save_pretrained(folder))")
    if not (folder / "model.safetensors").is_file():
        pickled = (folder / "pytorch_model.bin").is_file()
        hint = (" It has pytorch_model.bin, a pickle lorakit never loads: convert it with "
                "model.save_pretrained(folder, safe_serialization=True).") if pickled else ""
        raise CheckpointError(f"{folder} has no model.safetensors.{hint}")
    try:
        config = json.loads((folder / "config.json").read_text())
    except ValueError as err:
        raise CheckpointError(f"{folder}/config.json is not valid JSON ({err})") from None
    if config.get("model_type") != "bert":
        raise CheckpointError(f"{folder} holds a {config.get('model_type')!r} model; lorabert "
                              "needs a BERT (model_type 'bert') over k-mer tokens")
    return folder


def load_tokenizer(folder, stride: int | None = None,
                   frames: int | None = None) -> KmerTokenizer:
    return KmerTokenizer.from_folder(check_folder(folder), stride=stride, frames=frames)


class KmerBertClassifier(nn.Module):
    """A BERT encoder over k-mer windows and a linear head on pooled token states.

    A transcript is one or more windows (in one or more reading frames); its feature is
    [mean ; max] of the token states over all its windows, plus the log of its k-mer count
    (`pool_windows`; with several frames the mean is the per-frame mean's max): the mean
    carries composition (codon usage), the max lets one strongly coding stretch (an ORF
    among UTRs) speak for the whole transcript, and the count gives back the length that
    cutting into windows hides (length alone reaches AUROC ~0.90 on CPAT's human set).
    `classifier` is the head LoRA-BERT trains in full: LayerNorm, dropout, then one
    hidden layer of `head_hidden` units (GELU) before the output, or with `head_hidden`
    0 a single linear layer. The hidden layer lets the head weigh coding evidence
    differently by length (a short transcript's one ORF against a long one's several
    windows), which a linear head on the same features cannot.
    """

    def __init__(self, bert, num_labels: int = 2, dropout: float = 0.1,
                 head_hidden: int = 32) -> None:
        super().__init__()
        self.bert = bert
        width = 2 * bert.config.hidden_size + 1
        # LayerNorm first: the max half of the features has another scale than the mean half
        layers: list[nn.Module] = [nn.LayerNorm(width), nn.Dropout(dropout)]
        if head_hidden:
            layers += [nn.Linear(width, head_hidden), nn.GELU()]
        layers.append(nn.Linear(head_hidden or width, num_labels))
        self.classifier = nn.Sequential(*layers)

    @property
    def config(self):
        return self.bert.config

    def window_states(self, input_ids, attention_mask):
        """Per window: (sum of token states, max of token states, token count)."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        total = (hidden * mask).sum(1)
        peak = hidden.masked_fill(mask == 0, float("-inf")).amax(1)
        return total, peak, mask.sum(1)

    @staticmethod
    def pool_windows(total, peak, count, n_kmers: int, frames=None):
        """[mean ; max ; log n_kmers] of a set of windows' token states: (W, H) -> (2H+1,).

        `n_kmers` is the whole transcript's k-mer count, so the length feature is the same
        whether training reads a subset of the windows or prediction reads them all.
        `frames` (W,) gives each window's reading frame: the mean is then taken within
        each frame and the largest per-frame mean kept, feature by feature, so codon usage
        and the absence of stop codons in the coding frame are not averaged away by the
        two frames that read the same nucleotides out of step."""
        length = torch.tensor([float(max(n_kmers, 1))], device=total.device,
                              dtype=total.dtype).log()
        if frames is None:
            mean = total.sum(0) / count.sum(0)
        else:
            mean = torch.stack([total[frames == f].sum(0) / count[frames == f].sum(0)
                                for f in frames.unique()]).amax(0)
        return torch.cat([mean, peak.amax(0), length])

    def head(self, features):
        return self.classifier(features)


def load_classifier(folder, num_labels: int = 2, head_hidden: int = 32) -> KmerBertClassifier:
    """The encoder of a k-mer BERT folder (any MLM head is dropped) with a new head."""
    from transformers import BertModel
    from transformers.utils import logging as hf_logging
    folder = check_folder(folder)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "weights not used: cls.predictions..." is expected
    try:
        bert = BertModel.from_pretrained(str(folder), add_pooling_layer=False,
                                         use_safetensors=True)
    except Exception as err:
        raise CheckpointError(f"could not load the BERT in {folder}: {err}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return KmerBertClassifier(bert, num_labels, head_hidden=head_hidden).train()
