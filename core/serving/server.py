"""`lorakit serve`: an OpenAI-compatible HTTP endpoint over an `AdapterPool` (Starlette + uvicorn).

    POST /v1/completions   {"model": <adapter name or the base's>, "prompt": ..., "max_tokens",
                            "temperature", "top_p", "seed"}  →  OpenAI's text_completion object
    GET  /v1/models        the base model and every adapter the pool knows (`model` names the
                           adapter, as vLLM and LoRAX do)
    GET  /health           {"status": "ok"}

One worker thread owns the model: it drains the requests the HTTP handlers hand it
between decoding steps (continuous batching), so concurrent requests for different
adapters share batches. Every error a client can cause is a 4xx with OpenAI's error
object `{"error": {"message", "type", "param", "code"}}`; a failure inside a step fails
the requests of that batch with a 500 and the server goes on.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..errors import LoraKitError
from .engine import Completion, Engine, Request

# error class of a failed completion -> (HTTP status, OpenAI error type, code)
STATUS = {"UnknownAdapterError": (404, "invalid_request_error", "model_not_found"),
          "AdapterUnavailableError": (422, "invalid_request_error", "adapter_unavailable"),
          "PromptTooLongError": (400, "invalid_request_error", "context_length_exceeded")}


@dataclass
class Limits:
    """What one request may ask for; larger asks get a 4xx."""

    max_tokens: int = 256           # largest `max_tokens`
    max_body_bytes: int = 1 << 16   # largest request body
    default_max_tokens: int = 16    # OpenAI's default for /v1/completions


class ClientError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind


def error_response(err: ClientError) -> JSONResponse:
    return JSONResponse({"error": {"message": str(err), "type": err.kind, "param": err.param,
                                   "code": err.code}}, status_code=err.status)


class Worker:
    """The thread that runs the engine: requests in through a queue, steps while busy."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.inbox: queue.Queue = queue.Queue()
        self.pending: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self.thread = threading.Thread(target=self._run, name="lorakit-engine", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.inbox.put(None)
        self.thread.join(timeout=30)

    async def complete(self, request: Request) -> Completion:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.inbox.put((request, loop, future))
        return await future

    def _run(self) -> None:
        while True:
            items = [] if self.engine.busy else [self.inbox.get()]   # idle: sleep until asked
            while True:
                try:
                    items.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            if any(item is None for item in items):
                return
            done: list[tuple[int, Completion]] = []
            for request, loop, future in items:
                try:
                    self.pending[self.engine.submit(request)] = (loop, future)
                except Exception as err:   # never let one request stop the thread
                    completion = Completion(request, [], finish_reason="error",
                                            error=f"internal error: {err}",
                                            error_type="InternalError")
                    loop.call_soon_threadsafe(_resolve, future, completion)
            if self.engine.busy:
                try:
                    done = self.engine.step()
                except Exception as err:  # a bug or a broken tensor: fail this batch, serve on
                    done = self.engine.abort(f"internal error: {err}")
            for ticket, completion in done:
                loop, future = self.pending.pop(ticket)
                loop.call_soon_threadsafe(_resolve, future, completion)


def _resolve(future: asyncio.Future, completion: Completion) -> None:
    if not future.done():
        future.set_result(completion)


def _number(body: dict, key: str, default, kind, low, high):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (kind is int and not float(value).is_integer()):
        raise ClientError(400, f"{key!r} must be {'an integer' if kind is int else 'a number'}",
                          key)
    if not low <= value <= high:
        raise ClientError(400, f"{key!r} must be between {low} and {high}, not {value}", key)
    return kind(value)


def parse_completion(body, base_name: str, limits: Limits) -> tuple[list[Request], str]:
    """The requests a /v1/completions body asks for (one per prompt), or a ClientError."""
    if not isinstance(body, dict):
        raise ClientError(400, "the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ClientError(400, "'model' (the adapter name, or the base model's) is required",
                          "model")
    for key in ("stream", "echo", "logprobs", "suffix", "best_of"):
        if body.get(key):
            raise ClientError(400, f"{key!r} is not supported by lorakit serve", key)
    if body.get("n", 1) != 1:
        raise ClientError(400, "'n' must be 1", "n")
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and
                                                     not isinstance(t, bool) for t in prompt):
        prompts = [prompt]
    else:
        raise ClientError(400, "'prompt' must be a non-empty string, a list of strings or a "
                          "list of token ids", "prompt")
    max_tokens = _number(body, "max_tokens", min(limits.default_max_tokens, limits.max_tokens),
                         int, 1, limits.max_tokens)
    temperature = _number(body, "temperature", 1.0, float, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, float, 0.0, 1.0)
    seed = _number(body, "seed", None, int, 0, 2**63 - 1)
    adapter = None if model == base_name else model
    return [Request(p, adapter, max_new_tokens=max_tokens, temperature=temperature,
                    top_p=max(top_p, 1e-6), seed=seed) for p in prompts], model


def create_app(engine: Engine, base_name: str, api_key: str | None = None,
               limits: Limits | None = None) -> Starlette:
    """The ASGI app; the engine's thread starts and stops with the app's lifespan."""
    limits = limits or Limits()
    worker = Worker(engine)
    pool = engine.pool

    def authorise(request: HTTPRequest) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise ClientError(401, "missing or wrong API key: send 'Authorization: Bearer "
                              "<key>'", kind="authentication_error", code="invalid_api_key")

    async def models(request: HTTPRequest) -> JSONResponse:
        try:
            authorise(request)
        except ClientError as err:
            return error_response(err)
        pool.refresh()
        now = int(time.time())
        data = [{"id": base_name, "object": "model", "created": now, "owned_by": "lorakit",
                 "root": base_name, "parent": None}]
        data += [{"id": name, "object": "model", "created": now, "owned_by": "lorakit",
                  "root": base_name, "parent": base_name, "status": pool.status(name)}
                 for name in pool.names]
        return JSONResponse({"object": "list", "data": data})

    async def completions(request: HTTPRequest) -> JSONResponse:
        try:
            authorise(request)
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and \
                    int(declared) > limits.max_body_bytes:
                raise ClientError(413, f"the body is over {limits.max_body_bytes} bytes",
                                  code="request_too_large")
            raw = b""
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > limits.max_body_bytes:
                    raise ClientError(413, f"the body is over {limits.max_body_bytes} bytes",
                                      code="request_too_large")
            try:
                body = json.loads(raw)
            except ValueError as err:
                raise ClientError(400, f"the body is not valid JSON ({err})") from None
            requests, model = parse_completion(body, base_name, limits)
            done = await asyncio.gather(*(worker.complete(r) for r in requests))
            failed = next((c for c in done if c.error), None)
            if failed is not None:
                status, kind, code = STATUS.get(failed.error_type,
                                                (500 if failed.error_type == "InternalError"
                                                 else 400, "invalid_request_error", None))
                raise ClientError(status, failed.error, "model" if status in (404, 422)
                                  else None, code, kind if status < 500 else "server_error")
        except ClientError as err:
            return error_response(err)
        prompt_tokens = sum(len(c.prompt_tokens) for c in done)
        completion_tokens = sum(len(c.tokens) for c in done)
        return JSONResponse({
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
            "created": int(time.time()), "model": model,
            "choices": [{"index": i, "text": c.text if c.text is not None else "",
                         "token_ids": c.tokens, "finish_reason": c.finish_reason,
                         "logprobs": None} for i, c in enumerate(done)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}})

    async def health(_request: HTTPRequest) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def not_found(request: HTTPRequest, _exc) -> JSONResponse:
        return error_response(ClientError(404, f"no route {request.url.path}",
                                          code="not_found"))

    async def wrong_method(request: HTTPRequest, _exc) -> JSONResponse:
        return error_response(ClientError(405, f"{request.method} is not allowed on "
                                          f"{request.url.path}"))

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        worker.start()
        try:
            yield
        finally:
            worker.stop()

    return Starlette(routes=[Route("/v1/completions", completions, methods=["POST"]),
                             Route("/v1/models", models, methods=["GET"]),
                             Route("/health", health, methods=["GET"])],
                     exception_handlers={404: not_found, 405: wrong_method},
                     lifespan=lifespan)


def load_base(folder):
    """(causal LM in eval mode, tokenizer, name) from a transformers model folder."""
    from pathlib import Path

    from ..errors import CheckpointError
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise LoraKitError("lorakit serve needs transformers: pip install 'lorakit[serve]'") \
            from None
    folder = Path(folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as err:   # transformers, safetensors and json raise their own
        raise CheckpointError(f"{folder} does not load as a transformers causal language "
                              f"model ({err})") from None
    return model, tokenizer, folder.name
