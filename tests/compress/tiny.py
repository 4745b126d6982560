"""Tiny random stand-ins for the compressed-base tests."""
import torch


def tiny_llama(seed=0):
    """A 2-layer LlamaForCausalLM, hidden 64 (groups of 64 fit every Linear)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=32)
    return LlamaForCausalLM(config).eval()


def token_batch(seed=0, batch=2, length=12):
    return torch.randint(0, 96, (batch, length), generator=torch.Generator().manual_seed(seed))


def linear_output(layer, x):
    with torch.no_grad():
        return layer(x)
