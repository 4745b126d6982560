"""Text building blocks: real bases and real text, fetched once into the lorakit cache.

    from lorakit.domains.text.minilm import minilm        # BertModel, tokenizer
    from lorakit.domains.text.smollm2 import smollm2      # LlamaForCausalLM, tokenizer
    from lorakit.domains.text.sentiment import sentiment  # 4 domains, positive/negative
    from lorakit.domains.text.wordnet import wordnet      # glosses, 45 classes
    from lorakit.domains.text.austen import austen        # six novels, split by novel

Every file comes from a package registry at a pinned version and sha256
(`lorakit.domains.downloads`) and is never committed. Licences: all-MiniLM-L6-v2 and
SmolLM2-135M-Instruct Apache-2.0; the VADER sentences MIT (C.J. Hutto); WordNet 3.0
the WordNet licence (Princeton University); janeaustenr MIT (Julia Silge), the novels
public domain. `python -m lorakit.domains.text.fetch --all` fetches everything ahead of
time. Nothing here knows about adapters.
"""
