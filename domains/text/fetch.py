"""Fetch (and convert) the text domain's bases and data sets into the lorakit cache.

    python -m lorakit.domains.text.fetch --all
    python -m lorakit.domains.text.fetch minilm sentiment

Nothing else needs this: the loaders fetch on first use. It is for a machine that will
be offline later, or to pay the SmolLM2 conversion (a minute or two, ~540 MB) up front.
"""
from __future__ import annotations

import argparse
import sys
import time

from lorakit.errors import LoraKitError


def _minilm(cache):
    from .minilm import minilm_dir
    return minilm_dir(cache)


def _smollm2(cache):
    from .smollm2 import smollm2_dir
    return smollm2_dir(cache)


def _sentiment(cache):
    from .sentiment import sentiment
    data = sentiment(cache)
    return ", ".join(f"{d} {sum(len(v) for v in s.values())}" for d, s in data.items())


def _wordnet(cache):
    from .wordnet import wordnet
    return f"{sum(len(v) for v in wordnet(cache).values())} glosses"


def _austen(cache):
    from .austen import austen
    return ", ".join(f"{k} {len(v)} paragraphs" for k, v in austen(cache).items())


ITEMS = {"minilm": _minilm, "smollm2": _smollm2, "sentiment": _sentiment,
         "wordnet": _wordnet, "austen": _austen}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorakit.domains.text.fetch",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("items", nargs="*", metavar="ITEM",
                        help=f"what to fetch: {', '.join(ITEMS)}")
    parser.add_argument("--all", action="store_true", help="fetch everything")
    parser.add_argument("--cache", default=None,
                        help="the cache folder (default $LORAKIT_CACHE, else ~/.cache/lorakit)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for the conversions (default 1)")
    args = parser.parse_args(argv)
    items = list(ITEMS) if args.all else args.items
    unknown = [name for name in items if name not in ITEMS]
    if not items or unknown:
        parser.error(f"name what to fetch ({', '.join(ITEMS)}) or pass --all"
                     + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    import torch

    torch.set_num_threads(args.threads)
    for name in items:
        start = time.perf_counter()
        try:
            result = ITEMS[name](args.cache)
        except LoraKitError as err:
            print(f"{name}: {err}", file=sys.stderr)
            return 1
        print(f"{name}: {result} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
