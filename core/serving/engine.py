r"""Heterogeneous batched generation with continuous batching, on the model's KV cache.

    submit() ─► waiting ─► step(): admit (pin the adapter's slot) ─► prefill the newcomers
                                   (left-padded) ─► join the running batch's cache
                                   ─► one decode step for every running row
                                   ─► finished rows leave (slot unpinned, cache rows dropped)

Every row of the batch carries its own adapter (the pool's routed forward), prompt
length, sampling settings and random generator, so a request's tokens do not depend on
what else is in the batch. Rows are left-padded: the cache of a batch is a
(rows × heads × T × dim) tensor per layer whose padding columns the attention mask
hides, and position ids count each row's real tokens only, so a row sees exactly the
positions it would see alone. When newcomers join, the shorter of the running cache and
theirs is padded on the left to the other's length (the scheduler of S-LoRA / vLLM's
continuous batching, at this scale: whole caches, no paged blocks).
"""
from __future__ import annotations

import inspect
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LoraKitError
from .pool import AdapterPool, PoolBusy


@dataclass
class Request:
    """One generation: its prompt (text or token ids), adapter (None: the base) and sampling."""

    prompt: str | Sequence[int]
    adapter: str | None = None
    max_new_tokens: int = 16
    temperature: float = 0.0         # 0: greedy
    top_p: float = 1.0
    seed: int | None = None          # sampling's random stream; None: a fresh one
    stop_at_eos: bool = True


@dataclass
class Completion:
    request: Request
    prompt_tokens: list[int]
    tokens: list[int] = field(default_factory=list)
    text: str | None = None
    finish_reason: str = "length"    # "length", "stop" (end of sequence) or "error"
    error: str | None = None
    error_type: str | None = None    # the exception class name, for HTTP status mapping
    arrived: float = 0.0             # time.perf_counter() stamps
    started: float = 0.0
    finished: float = 0.0


@dataclass
class _Row:
    ticket: int
    completion: Completion
    slot: int
    generator: torch.Generator | None
    length: int                      # real tokens of this row in the cache


def _cache_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _new_cache(tensors: list[tuple[torch.Tensor, torch.Tensor]]):
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=tensors)


def sample(logits: torch.Tensor, request: Request, generator: torch.Generator | None) -> int:
    """Greedy at temperature 0, else temperature + nucleus (top-p) sampling from one row."""
    logits = logits.float()
    if request.temperature <= 0:
        return int(logits.argmax())
    probs = F.softmax(logits / request.temperature, dim=-1)
    if request.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = sorted_p.cumsum(-1) - sorted_p >= request.top_p
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=generator))


class Engine:
    """Continuous batching over an `AdapterPool`: `submit` requests, call `step` until idle.

    `max_batch`: rows decoded together. `max_prompt_tokens`: longer prompts are refused
    (default: the model's context minus the request's new tokens). `eos_token_id`: where
    generation stops (default: the tokenizer's, else the model's generation config).

    Admission: while a batch is decoding, newcomers are prefilled together once
    `min_admit` of them can join (default max_batch // 4), or when one has waited
    `max_wait_steps` steps. Every forward pass reads all the base weights, so on a CPU a
    prefill of one prompt costs about a decoding step; admitting each arrival at once
    would double the passes per generated token under a steady stream of requests.
    """

    def __init__(self, model: nn.Module, pool: AdapterPool, tokenizer=None, max_batch: int = 8,
                 max_prompt_tokens: int | None = None, eos_token_id: int | None = None,
                 pad_token_id: int = 0, min_admit: int | None = None,
                 max_wait_steps: int = 4) -> None:
        self.model, self.pool, self.tokenizer = model, pool, tokenizer
        self.max_batch = max_batch
        self.min_admit = max(1, max_batch // 4) if min_admit is None else min_admit
        self.max_wait_steps = max_wait_steps
        self._held = 0                               # steps newcomers have been held back
        context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.context = context
        self.max_prompt_tokens = max_prompt_tokens or context
        if eos_token_id is None and tokenizer is not None:
            eos_token_id = tokenizer.eos_token_id
        if eos_token_id is None:
            eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
            eos_token_id = eos[0] if isinstance(eos, list) else eos
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.waiting: deque[tuple[int, Completion]] = deque()
        self.rows: list[_Row] = []
        self._cache = None
        self._mask: torch.Tensor | None = None      # (rows, T): 1 for real cache columns
        self._tickets = 0
        self.steps = 0
        # transformers 5.x renamed the forward's `past_key_values` to `cache`
        forward = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"
        # only the last position's logits are needed: skips most of the LM head in a prefill
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in forward else {}

    # --- requests in and out ------------------------------------------------------------
    def tokens_of(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise LoraKitError("a text prompt needs a tokenizer; pass token ids or one")
            return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        return [int(t) for t in prompt]

    def submit(self, request: Request) -> int:
        """Queue a request; returns its ticket (the order of submission)."""
        ticket = self._tickets
        self._tickets += 1
        completion = Completion(request, [], arrived=time.perf_counter())
        try:
            completion.prompt_tokens = self.tokens_of(request.prompt)
            self._check(request, completion.prompt_tokens)
        except LoraKitError as err:
            self._fail(completion, err)
        self.waiting.append((ticket, completion))
        return ticket

    def _check(self, request: Request, tokens: list[int]) -> None:
        if not tokens:
            raise LoraKitError("the prompt is empty")
        vocab = getattr(getattr(self.model, "config", None), "vocab_size", None)
        if vocab and not all(0 <= t < vocab for t in tokens):
            raise LoraKitError(f"prompt token ids must lie in 0..{vocab - 1}")
        if request.max_new_tokens < 1:
            raise LoraKitError("max_new_tokens must be at least 1")
        if self.max_prompt_tokens and len(tokens) > self.max_prompt_tokens:
            raise PromptTooLongError(f"the prompt has {len(tokens)} tokens; this server takes "
                                     f"at most {self.max_prompt_tokens}")
        if self.context and len(tokens) + request.max_new_tokens > self.context:
            raise PromptTooLongError(f"prompt ({len(tokens)} tokens) + max_new_tokens "
                                     f"({request.max_new_tokens}) exceed the model's context "
                                     f"of {self.context} tokens")

    @staticmethod
    def _fail(completion: Completion, err: Exception) -> None:
        completion.finish_reason, completion.error = "error", str(err)
        completion.error_type = type(err).__name__

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.rows)

    # --- one scheduling step ------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> list[tuple[int, Completion]]:
        """Admit waiting requests, prefill them, decode one token for every row; returns
        the (ticket, completion) pairs that finished in this step."""
        done: list[tuple[int, Completion]] = []
        newcomers = self._admit(done)
        if newcomers:
            self._prefill(newcomers)
            done += self._retire()
        if self.rows:
            self._decode()
            done += self._retire()
        self.steps += 1
        return done

    def _admit(self, done: list) -> list[_Row]:
        newcomers: list[_Row] = []
        joinable = min(len(self.waiting), self.max_batch - len(self.rows))
        if self.rows and self.waiting and joinable < self.min_admit and \
                self._held < self.max_wait_steps:
            self._held += 1                          # gather a few to prefill in one pass
            return newcomers
        self._held = 0
        while self.waiting and len(self.rows) + len(newcomers) < self.max_batch:
            ticket, completion = self.waiting[0]
            request = completion.request
            if completion.error is None:
                try:
                    slot = self.pool.acquire(request.adapter) if request.adapter else -1
                except PoolBusy:
                    break                     # wait for a running request to free a slot
                except LoraKitError as err:
                    self._fail(completion, err)
            self.waiting.popleft()
            if completion.error is not None:
                completion.finished = time.perf_counter()
                done.append((ticket, completion))
                continue
            generator = None
            if request.temperature > 0:
                generator = torch.Generator()
                generator.manual_seed(request.seed if request.seed is not None
                                      else int(torch.randint(2**62, ())))
            completion.started = time.perf_counter()
            newcomers.append(_Row(ticket, completion, slot, generator,
                                  len(completion.prompt_tokens)))
        return newcomers

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _prefill(self, rows: list[_Row]) -> None:
        device = self._device()
        width = max(r.length for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - r.length:] = torch.tensor(r.completion.prompt_tokens)
            mask[i, width - r.length:] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        from transformers import DynamicCache

        cache = DynamicCache()
        with self.pool.routed([r.slot for r in rows]):
            out = self.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                             position_ids=positions.to(device), use_cache=True,
                             **{self._cache_arg: cache}, **self._last_only)
        for i, r in enumerate(rows):
            self._emit(r, out.logits[i, -1])
        self._join(rows, cache, mask)

    def _join(self, rows: list[_Row], cache, mask: torch.Tensor) -> None:
        """Append the newcomers' cache rows to the running batch's, left-padding the shorter."""
        if self._cache is None:
            self.rows, self._cache, self._mask = list(rows), cache, mask
            return
        old, new = _cache_tensors(self._cache), _cache_tensors(cache)
        width = max(self._mask.shape[1], mask.shape[1])

        def pad(t: torch.Tensor, to: int) -> torch.Tensor:   # (rows, heads, T, dim), on the left
            return F.pad(t, (0, 0, to - t.shape[2], 0))
        merged = [(torch.cat([pad(k0, width), pad(k1, width)]),
                   torch.cat([pad(v0, width), pad(v1, width)]))
                  for (k0, v0), (k1, v1) in zip(old, new)]
        self._mask = torch.cat([F.pad(self._mask, (width - self._mask.shape[1], 0)),
                                F.pad(mask, (width - mask.shape[1], 0))])
        self._cache = _new_cache(merged)
        self.rows += rows

    def _decode(self) -> None:
        device = self._device()
        last = torch.tensor([[r.completion.tokens[-1]] for r in self.rows])
        self._mask = F.pad(self._mask, (0, 1), value=1)
        positions = torch.tensor([[r.length] for r in self.rows])
        with self.pool.routed([r.slot for r in self.rows]):
            out = self.model(input_ids=last.to(device), attention_mask=self._mask.to(device),
                             position_ids=positions.to(device), use_cache=True,
                             **{self._cache_arg: self._cache})
        for i, r in enumerate(self.rows):
            r.length += 1
            self._emit(r, out.logits[i, -1])

    def _emit(self, row: _Row, logits: torch.Tensor) -> None:
        completion = row.completion
        token = sample(logits, completion.request, row.generator)
        completion.tokens.append(token)
        if completion.request.stop_at_eos and token == self.eos_token_id:
            completion.finish_reason = "stop"

    def _retire(self) -> list[tuple[int, Completion]]:
        """Drop finished rows from the batch, their cache rows and all-padding columns."""
        keep, done = [], []
        for i, r in enumerate(self.rows):
            c = r.completion
            if c.finish_reason == "stop" or len(c.tokens) >= c.request.max_new_tokens:
                if r.slot >= 0:
                    self.pool.release(r.slot)
                c.finished = time.perf_counter()
                if self.tokenizer is not None:
                    c.text = self.tokenizer.decode(c.tokens, skip_special_tokens=True)
                done.append((r.ticket, c))
            else:
                keep.append(i)
        if len(keep) == len(self.rows):
            return done
        if not keep:
            self.rows, self._cache, self._mask = [], None, None
            return done
        index = torch.tensor(keep)
        mask = self._mask[index]
        first = int(mask.any(0).nonzero()[0])          # columns no remaining row uses
        self._mask = mask[:, first:]
        self._cache = _new_cache([(k[index.to(k.device), :, first:], v[index.to(v.device), :, first:])
                                  for k, v in _cache_tensors(self._cache)])
        self.rows = [self.rows[i] for i in keep]
        return done

    def abort(self, reason: str) -> list[tuple[int, Completion]]:
        """Fail every running request (their slots released, the batch emptied); the
        waiting ones stay queued. What a server does when a step raised."""
        done = []
        for row in self.rows:
            if row.slot >= 0:
                self.pool.release(row.slot)
            row.completion.finish_reason, row.completion.error = "error", reason
            row.completion.error_type = "InternalError"
            row.completion.finished = time.perf_counter()
            done.append((row.ticket, row.completion))
        self.rows, self._cache, self._mask = [], None, None
        return done

    def run(self) -> list[tuple[int, Completion]]:
        """Step until every submitted request has finished."""
        done = []
        while self.busy:
            done += self.step()
        return done


class PromptTooLongError(LoraKitError):
    """A prompt (with its new tokens) does not fit the model's context or the server's limit."""


def generate(model: nn.Module, pool: AdapterPool, requests: Sequence[Request | dict],
             tokenizer=None, max_batch: int = 8, **engine_options) -> list[Completion]:
    """Generate every request, each with its own adapter and sampling, in mixed batches of
    up to `max_batch` rows; completions come back in the order of `requests`. A request
    that cannot run (unknown adapter, over-long prompt) gets finish_reason "error"."""
    engine = Engine(model, pool, tokenizer, max_batch=max_batch, **engine_options)
    for request in requests:
        engine.submit(request if isinstance(request, Request) else Request(**request))
    return [c for _, c in sorted(engine.run(), key=lambda tc: tc[0])]
