"""Tiny random stand-ins of the pruned bases (SmolLM2's Llama with GQA, MiniLM's BERT), and
the reference a pruned model must equal: the full model with the pruned units zeroed."""
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
)

import lorakit

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BERT_TARGETS = ["query", "key", "value", "*.intermediate.dense", "*.output.dense"]


def tiny_llama(seed: int = 0, heads: int = 6, kv_heads: int = 2) -> LlamaForCausalLM:
    """hidden 48, 6 query heads in 2 KV groups of 3 (GQA), head_dim 8, 64 MLP channels."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=8,
                      max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    """hidden 32, 4 heads of 8, 48 MLP channels, 3 labels."""
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=48, max_position_embeddings=32, num_labels=3,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg).eval()


def tokens(seed: int = 0, batch: int = 2, length: int = 10) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 64, (batch, length), generator=g)


def lm_batches(n: int = 2, seed: int = 0) -> list[dict]:
    out = []
    for i in range(n):
        ids = tokens(seed + i)
        out.append({"input_ids": ids, "labels": ids})
    return out


def randomise_adapters(adapters, seed: int = 0, std: float = 0.2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapters.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def attach_lora(model, targets, rank: int = 4, seed: int = 0):
    adapters = lorakit.attach(model, lorakit.LoRAConfig(rank=rank, alpha=8, targets=targets))
    randomise_adapters(adapters, seed)
    return adapters


@torch.no_grad()
def zero_pruned_units(model, report) -> None:
    """Zero, in the full `model`, the columns that the pruned model's o / down projections
    lost: the full model then computes exactly what the pruned one does (up to summation
    order), since a removed head or channel only reaches the residual stream through them."""
    from lorakit.compress.structure import blocks, linear

    for block in blocks(model):
        for path in (block.o, block.mlp_out):
            if path not in report.kept:
                continue
            lin = linear(model, path)
            mask = torch.ones(lin.in_features, dtype=torch.bool)
            mask[torch.tensor(report.kept[path]["cols"])] = False
            lin.weight[:, mask] = 0
