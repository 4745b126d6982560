"""The command line every suite shares, `python -m lorakit.benchmarks.suites.<file>`.

It is the run `lorakit bench --suite <suite>` makes: --out (default reports/<suite>),
--threads and --quick (`lorakit.reports.bench.suite_parser`), then the suite's own flags; the
runner (`lorakit.reports.bench.write_suite_run`) sets the torch threads, writes results.json and
report.md into --out and prints the figures. A suite's file ends with

    if __name__ == "__main__":
        from lorakit.benchmarks.common.command_line import suite_main

        suite_main(SUITE, __doc__, run)

and passes the hooks below only for what its own command line adds.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def suite_main(suite: str, doc: str, run: Callable[..., dict], argv: list[str] | None = None,
               *, options: Callable[[argparse.ArgumentParser], object] | None = None,
               keywords: Callable[[argparse.Namespace], dict] | None = None,
               name: Callable[[argparse.Namespace], str] | None = None,
               worker: Callable[[argparse.Namespace], bool] | None = None) -> dict | None:
    """Parse `argv` (default: sys.argv) and call `run(out, threads, quick, **keywords)` as
    `lorakit bench` does; returns the result written.

    - `options(parser)` adds the suite's own flags;
    - `keywords(args)` turns them into `run`'s keyword arguments;
    - `name(args)` is the suite the results are recorded as, where a flag runs another
      registered suite of the same file (`variants --task wordnet`: `variants-wordnet`);
    - `worker(args)` does a job of the same command that is not a suite run (a memory
      worker in a fresh process, a partial fit, a print of a finished run's figures) and
      returns True when it did; then nothing else runs and None is returned.
    """
    from lorakit.reports.bench import suite_parser, write_suite_run

    parser = suite_parser(doc, suite)
    if options is not None:
        options(parser)
    args = parser.parse_args(argv)
    if worker is not None and worker(args):
        return None
    extra = keywords(args) if keywords is not None else {}
    return write_suite_run(name(args) if name is not None else suite, args,
                           lambda: run(Path(args.out), args.threads, args.quick, **extra))
