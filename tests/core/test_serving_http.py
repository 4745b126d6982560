"""`lorakit serve` end to end: a real uvicorn on a loopback port, a real HTTP client."""
from __future__ import annotations

import copy
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from lorakit.cli import build_parser  # noqa: E402
from lorakit.serving import AdapterPool, Request, generate  # noqa: E402
from lorakit.serving.command import build_server  # noqa: E402

from .test_serving import write_adapter  # noqa: E402

torch.set_num_threads(1)
KEY = "s3cret"


def byte_tokenizer():
    """A byte-level tokenizer with no merges: 256 tokens, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="!")


def tiny_base(folder, hidden=32):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=256, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        initializer_range=0.2, bos_token_id=None, pad_token_id=0, eos_token_id=None)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    tokenizer = byte_tokenizer()
    tokenizer.save_pretrained(folder)
    return model, tokenizer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    base, tokenizer = tiny_base(root / "tiny-llama")
    adapters = root / "adapters"
    adapters.mkdir()
    write_adapter(base, adapters / "alpha.safetensors", 4, seed=1)
    write_adapter(base, adapters / "beta.safetensors", 8, ("q_proj", "o_proj"), seed=2)
    other, _ = tiny_base(root / "other", hidden=48)
    write_adapter(other, adapters / "wrongbase.safetensors", 4, seed=3)
    port = free_port()
    args = build_parser().parse_args(
        ["serve", str(root / "tiny-llama"), str(adapters), "--port", str(port), "--api-key",
         KEY, "--max-tokens", "12", "--max-prompt-tokens", "40", "--max-body-bytes", "2000",
         "--max-batch", "4"])
    assert args.host == "127.0.0.1"
    app, engine = build_server(args)
    uv = uvicorn.Server(uvicorn.Config(app, host=args.host, port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not uv.started:
        assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}", "base": base, "tokenizer": tokenizer,
           "adapters": adapters, "engine": engine, "port": port}
    uv.should_exit = True
    thread.join(timeout=30)
    assert not thread.is_alive(), "the server did not shut down"
    assert not engine.busy
    with pytest.raises(OSError):             # nothing listens on the port any more
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def call(url, path, body=None, key=KEY, raw: bytes | None = None, method=None):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_concurrent_requests_for_different_adapters_equal_lorakit_generate(server):
    prompts = ["Hello there", "ab", "The quick brown fox", "zz top", "lorakit", "x"]
    models = ["alpha", "beta", "tiny-llama", "alpha", "beta", "tiny-llama"]
    with ThreadPoolExecutor(6) as ex:
        replies = list(ex.map(lambda pm: call(server["url"], "/v1/completions", {
            "model": pm[1], "prompt": pm[0], "max_tokens": 6, "temperature": 0}),
            zip(prompts, models)))
    assert all(status == 200 for status, _ in replies), replies
    model = copy.deepcopy(server["base"])
    pool = AdapterPool(model, server["adapters"])
    expected = generate(model, pool, [Request(p, None if m == "tiny-llama" else m,
                                              max_new_tokens=6)
                                      for p, m in zip(prompts, models)],
                        tokenizer=server["tokenizer"])
    for (_, body), want, m in zip(replies, expected, models):
        choice = body["choices"][0]
        assert body["object"] == "text_completion" and body["model"] == m
        assert choice["token_ids"] == want.tokens
        assert choice["text"] == server["tokenizer"].decode(want.tokens)
        assert body["usage"]["completion_tokens"] == len(want.tokens)
        assert choice["finish_reason"] == want.finish_reason


def test_models_lists_the_base_and_every_adapter(server):
    status, body = call(server["url"], "/v1/models")
    assert status == 200
    ids = {m["id"]: m for m in body["data"]}
    assert set(ids) == {"tiny-llama", "alpha", "beta", "wrongbase"}
    assert ids["wrongbase"]["status"].startswith("refused")
    assert ids["alpha"]["parent"] == "tiny-llama"


@pytest.mark.parametrize("body, raw, key, status, code", [
    (None, b"{not json", KEY, 400, None),
    ({"prompt": "hi"}, None, KEY, 400, None),                                   # no model
    ({"model": "alpha", "prompt": 5}, None, KEY, 400, None),
    ({"model": "alpha", "prompt": [1, 999]}, None, KEY, 400, None),            # bad token id
    ({"model": "alpha", "prompt": "hi", "max_tokens": 13}, None, KEY, 400, None),  # over limit
    ({"model": "alpha", "prompt": "hi", "temperature": "hot"}, None, KEY, 400, None),
    ({"model": "alpha", "prompt": "hi", "stream": True}, None, KEY, 400, None),
    ({"model": "nobody", "prompt": "hi"}, None, KEY, 404, "model_not_found"),
    ({"model": "wrongbase", "prompt": "hi"}, None, KEY, 422, "adapter_unavailable"),
    ({"model": "alpha", "prompt": "y" * 41}, None, KEY, 400, "context_length_exceeded"),
    ({"model": "alpha", "prompt": "y" * 3000}, None, KEY, 413, "request_too_large"),
    ({"model": "alpha", "prompt": "hi"}, None, None, 401, "invalid_api_key"),
    ({"model": "alpha", "prompt": "hi"}, None, "wrong", 401, "invalid_api_key"),
])
def test_bad_requests_get_a_4xx_json_error_and_the_server_keeps_serving(
        server, body, raw, key, status, code):
    got, reply = call(server["url"], "/v1/completions", body, key=key, raw=raw)
    assert got == status, reply
    assert set(reply["error"]) == {"message", "type", "param", "code"} and reply["error"]["message"]
    assert reply["error"]["code"] == code
    ok, good = call(server["url"], "/v1/completions",
                    {"model": "alpha", "prompt": "hi", "max_tokens": 2})
    assert ok == 200 and len(good["choices"][0]["token_ids"]) == 2


def test_a_file_broken_while_serving_fails_its_requests_only(server):
    adapters = server["adapters"]
    write_adapter(server["base"], adapters / "gamma.safetensors", 4, seed=5)
    status, _ = call(server["url"], "/v1/completions",
                     {"model": "gamma", "prompt": "hi", "max_tokens": 2})
    assert status == 200                        # a new file is found without a restart
    (adapters / "gamma.safetensors").write_bytes(b"\0" * 100)   # replaced by garbage
    status, reply = call(server["url"], "/v1/completions",
                         {"model": "gamma", "prompt": "hi", "max_tokens": 2})
    assert status == 422 and "gamma" in reply["error"]["message"]
    status, _ = call(server["url"], "/v1/completions",
                     {"model": "beta", "prompt": "hi", "max_tokens": 2})
    assert status == 200
    status, _ = call(server["url"], "/v1/nothing", {"model": "beta"})
    assert status == 404


@pytest.mark.slow
def test_lorakit_serve_on_smollm2_as_a_subprocess_equals_generate(tmp_path):
    """The real command on the real base: start, two adapters at once, Ctrl-C, exit 0."""
    import os
    import signal
    import subprocess
    import sys

    from lorakit.domains.text.smollm2 import smollm2, smollm2_dir

    model, tokenizer = smollm2()
    for i, name in enumerate(["poet", "clerk"]):
        write_adapter(model, tmp_path / f"{name}.safetensors", 8, seed=i, std=0.02)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lorakit.cli", "serve", str(smollm2_dir()), str(tmp_path),
         "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "CI": "1"})
    try:
        deadline = time.time() + 120
        while True:
            try:
                if call(f"http://127.0.0.1:{port}", "/health", method="GET", key=None)[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
            time.sleep(0.5)
        prompts = {"poet": "The sea at night", "clerk": "Dear customer, your order"}
        with ThreadPoolExecutor(2) as ex:
            replies = dict(zip(prompts, ex.map(lambda kv: call(
                f"http://127.0.0.1:{port}", "/v1/completions",
                {"model": kv[0], "prompt": kv[1], "max_tokens": 8, "temperature": 0},
                key=None), prompts.items())))
        pool = AdapterPool(model, tmp_path)
        want = generate(model, pool, [Request(p, a, max_new_tokens=8)
                                      for a, p in prompts.items()], tokenizer=tokenizer)
        for (adapter, (status, body)), w in zip(replies.items(), want):
            assert status == 200 and body["choices"][0]["token_ids"] == w.tokens, adapter
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
