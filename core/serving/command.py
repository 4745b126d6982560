"""The `lorakit serve` subcommand: its options (every one in `--help`) and what it runs.

Kept apart from `server.py` so that `lorakit --help` works without the `serve` extra.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import LoraKitError

EPILOG = """example:
  lorakit serve ~/.cache/lorakit/text/SmolLM2-135M-Instruct adapters/ --port 8000
  curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{"model": "my-adapter", "prompt": "Once upon a time", "max_tokens": 16}'
"""


def add_serve(sub) -> None:
    p = sub.add_parser(
        "serve", help="serve many adapters behind one base model over OpenAI-compatible HTTP "
        "(/v1/completions, /v1/models)",
        description="Serve every adapter in ADAPTERS behind one base model: each request's "
        "'model' names its adapter (or the base model's own name for none), requests for "
        "different adapters share batches, adapters load on demand into a bounded resident "
        "set. Needs the 'serve' extra (pip install 'lorakit[serve]').",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", type=Path,
                   help="base model: a transformers causal-LM folder (config.json, weights, "
                        "tokenizer), e.g. SmolLM2-135M-Instruct")
    p.add_argument("adapters", type=Path, nargs="+",
                   help="adapter files (.safetensors, lorakit format), PEFT adapter folders, "
                        "or folders holding them; each adapter is named after its file or "
                        "folder")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 "
                        "exposes the server to the network, set --api-key then)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--api-key", default=os.environ.get("LORAKIT_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every /v1 request (default: "
                        "$LORAKIT_API_KEY, or no key)")
    p.add_argument("--served-name", default=None,
                   help="the name clients use for the base model without an adapter "
                        "(default: the base folder's name)")
    p.add_argument("--max-resident-mb", type=float, default=None,
                   help="memory for resident adapters, in MiB (default: room for all of them)")
    p.add_argument("--max-batch", type=int, default=8,
                   help="requests decoded together in one batch (default 8)")
    p.add_argument("--max-tokens", type=int, default=256,
                   help="largest 'max_tokens' a request may ask for (default 256)")
    p.add_argument("--max-prompt-tokens", type=int, default=None,
                   help="longest prompt accepted, in tokens (default: the model's context)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 16,
                   help="largest request body in bytes (default 65536)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default info)")
    p.set_defaults(func=cmd_serve)


def build_server(args):
    """(ASGI app, engine) for parsed `serve` arguments; also used by the tests."""
    try:
        from .server import Limits, create_app, load_base
    except ImportError as err:
        raise LoraKitError(f"lorakit serve needs the 'serve' extra ({err}): pip install "
                           "'lorakit[serve]'") from None
    from .engine import Engine
    from .pool import AdapterPool

    model, tokenizer, name = load_base(args.base)
    budget = None if args.max_resident_mb is None else int(args.max_resident_mb * 2**20)
    sources = args.adapters[0] if len(args.adapters) == 1 else list(args.adapters)
    pool = AdapterPool(model, sources, max_resident_bytes=budget)
    engine = Engine(model, pool, tokenizer, max_batch=args.max_batch,
                    max_prompt_tokens=args.max_prompt_tokens)
    limits = Limits(max_tokens=args.max_tokens, max_body_bytes=args.max_body_bytes)
    return create_app(engine, args.served_name or name, args.api_key, limits), engine


def cmd_serve(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    app, engine = build_server(args)
    import uvicorn

    print(f"lorakit serve: {engine.pool!r} on http://{args.host}:{args.port}/v1")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
