"""The prompt classifier of the forgetting suite: a tiny Llama (SmolLM2's architecture class,
random weights) answering prompts, left padding that changes nothing, its training through
`AdapterModule` + `fit`, and the Austen perplexity."""
import math

import pytest
import torch

from lorakit.benchmarks.common.prompt_classifier import (
    PromptClassifier,
    answer_ids,
    collate_left,
    encode_prompts,
    perplexity,
    prompt_loader,
    text_chunks,
)

VOCAB = 64


class CharTokenizer:
    """One token per character (ids 2..63), enough of a tokenizer's interface for the
    prompt classifier; ' positive' and ' negative' get one token each, as in SmolLM2's."""
    words = {" negative": 0, " positive": 1}

    def __call__(self, texts, add_special_tokens=False, truncation=False, max_length=None):
        single = isinstance(texts, str)
        out = [self.encode(t)[:max_length] if truncation else self.encode(t)
               for t in ([texts] if single else texts)]
        return {"input_ids": out[0] if single else out}

    def encode(self, text: str) -> list[int]:
        if text in self.words:
            return [self.words[text]]
        return [2 + ord(c) % (VOCAB - 2) for c in text]


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=True, pad_token_id=0))


EXAMPLES = [("a fine film", 1), ("dull and long, far too long for anyone", 0),
            ("yes", 1), ("no good at all", 0)] * 4


def test_encode_prompts_cuts_the_sentence_and_keeps_the_prompts_ending():
    tok = CharTokenizer()
    items = encode_prompts(tok, EXAMPLES[:4], max_length=20)
    tail = tok.encode("\nSentiment:")
    for item, (_, label) in zip(items, EXAMPLES):
        ids = item["input_ids"].tolist()
        assert len(ids) <= 20 and ids[-len(tail):] == tail and item["labels"] == label
    assert items[2]["input_ids"].tolist() == tok.encode("Review: y\nSentiment:")
    whole = encode_prompts(tok, EXAMPLES[2:3], max_length=40)[0]
    assert whole["input_ids"].tolist() == tok.encode("Review: yes\nSentiment:")


def test_answer_ids_refuses_an_answer_of_several_tokens():
    assert answer_ids(CharTokenizer()) == [0, 1]

    class Spelling(CharTokenizer):
        words = {}
    with pytest.raises(ValueError, match="' negative' is 9 tokens"):
        answer_ids(Spelling())


def test_left_padding_puts_every_answer_position_last_and_changes_no_logit():
    items = encode_prompts(CharTokenizer(), EXAMPLES[:4], max_length=40)
    batch = collate_left(items, pad_id=0)
    assert batch["attention_mask"][:, -1].all()
    assert batch["attention_mask"].sum(1).tolist() == [len(it["input_ids"]) for it in items]
    module = PromptClassifier(tiny_llama(), None, [0, 1]).eval()
    together = module(batch)
    for row, item in enumerate(items):
        alone = module(collate_left([item], pad_id=0))
        assert torch.allclose(together[row], alone[0], atol=1e-5)


def test_evaluate_scores_the_two_answers_and_the_loss_is_over_the_vocabulary():
    module = PromptClassifier(tiny_llama(), None, [0, 1]).eval()
    batch = collate_left(encode_prompts(CharTokenizer(), EXAMPLES[:4], 40), pad_id=0)
    logits = module(batch)
    loss, correct, n = module.evaluate(batch)
    assert n == 4
    assert correct == int((logits[:, :2].argmax(-1) == batch["labels"]).sum())
    assert loss.item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, batch["labels"]).item(), rel=1e-6)


@pytest.mark.parametrize("method", [None, "lora", "lora_ga"])
def test_prompt_classifier_fits_and_moves_only_what_it_trains(tmp_path, method):
    from lorakit import LoRAConfig, init_from_gradients
    from lorakit.benchmarks.common.sentence_classifier import fit_recorded

    items = encode_prompts(CharTokenizer(), EXAMPLES, 40)
    config = None if method is None else LoRAConfig(method=method, rank=2,
                                                    targets=["*.q_proj", "*.v_proj"])
    lm = tiny_llama()
    frozen = {n: p.detach().clone() for n, p in lm.named_parameters()}
    module = PromptClassifier(lm, config, [0, 1], lr=1e-2, output_dir=str(tmp_path))
    if method == "lora_ga":
        init_from_gradients(module, module.adapters, list(prompt_loader(items, 4, 0, seed=1))[:2],
                            lambda m, b: m.loss(b))
    fit_recorded(module, prompt_loader(items, 4, 0, seed=0), prompt_loader(items, 8, 0),
                 steps=4, val_every=2, run_dir=tmp_path)
    assert [s for s, _, _ in module.val_curve] == [2, 4]
    assert len(module.step_times) == 4
    now = {n.replace(".base.", "."): p.detach() for n, p in lm.named_parameters()}
    moved = {n for n in frozen if not torch.equal(now[n], frozen[n])}
    if method is None:
        assert "model.layers.0.mlp.up_proj.weight" in moved
    else:
        assert moved == set()   # the base stays as it was (LoRA-GA's offset is in the file)
        assert (tmp_path / "adapter.safetensors").exists()


def test_text_chunks_takes_consecutive_tokens_and_refuses_short_text():
    tok = CharTokenizer()
    chunks = text_chunks(tok, ["abcdef", "ghij"], n=2, length=4)
    assert chunks.tolist() == [tok.encode("abcd"), tok.encode("ef\n\n")]
    with pytest.raises(ValueError, match="fewer than 5 chunks of 4"):
        text_chunks(tok, ["abc"], n=5, length=4)


def test_perplexity_is_exp_of_the_models_own_next_token_loss():
    lm = tiny_llama()
    chunks = torch.randint(2, VOCAB, (3, 16), generator=torch.Generator().manual_seed(1))
    expected = math.exp(lm(input_ids=chunks, labels=chunks).loss.item())
    assert perplexity(lm, chunks, batch_size=2) == pytest.approx(expected, rel=1e-5)
    assert lm.training   # put back in the mode it came in
