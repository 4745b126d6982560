"""`lorakit demo`: every plugin's demo (and the core benchmark) in one report folder.

Each demo runs as its own `lorakit <plugin> demo` process, `--jobs` of them at a time:
the demos are independent and each uses `--threads` torch threads, so on a two-core
machine two one-thread demos take about half the wall time of one after the other. With
`--jobs 1` a demo's output goes to the terminal; with more, each writes `demo.log` in its
own folder and the terminal gets one line per start and end. One failed demo does not
hide the others' reports: the index says which failed, and the exit code is 1.
"""
from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lorakit.registry import get_plugin, plugins

CORE_BENCHMARK = "core-benchmark"
CORE_BENCHMARK_SECONDS = 160.0  # `bench --suite core` on one thread, measured


@dataclass(frozen=True)
class Job:
    name: str          # the index's row name
    folder: str        # under the report folder
    argv: list[str]    # the `lorakit` arguments that run it
    seconds: float     # its typical wall time: the longest start first


def jobs(args) -> tuple[list[Job], list[dict]]:
    """The demos to run, and an index entry for each plugin that is not installed."""
    found = plugins()
    names = list(found) if args.all or not args.names else args.names
    todo, skipped = [], []
    for name in names:
        plugin = found.get(name) or get_plugin(name)
        if not plugin.installed:
            skipped.append({"name": name, "status": f"skipped: {plugin.install_hint}"})
            continue
        todo.append(Job(name, name, [name, "demo", "--out", str(args.out / name),
                                     "--threads", str(args.threads)], plugin.demo_seconds))
    if args.all or not args.names:
        todo.append(Job("core benchmark", CORE_BENCHMARK,
                        ["bench", "--suite", "core", "--out", str(args.out / CORE_BENCHMARK),
                         "--threads", str(args.threads), *(["--quick"] if args.quick else [])],
                        CORE_BENCHMARK_SECONDS))
    return todo, skipped


def run_job(job: Job, out: Path, to_log: bool) -> dict:
    folder = out / job.folder
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "lorakit.cli", *job.argv]
    print(f"== {job.name}: started" + (f" (log: {folder / 'demo.log'})" if to_log else ""),
          flush=True)
    t0 = time.perf_counter()
    if to_log:
        with open(folder / "demo.log", "w") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    else:
        code = subprocess.run(command).returncode
    seconds = time.perf_counter() - t0
    status = "ok" if code == 0 else f"FAILED: exit code {code}" + (
        f", see {job.folder}/demo.log" if to_log else "")
    print(f"== {job.name}: {status} in {seconds:.0f} s", flush=True)
    return {"name": job.name, "status": status, "folder": job.folder, "seconds": seconds}


def cmd_demo(args) -> int:
    from lorakit.reports.index import write_index

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    todo, entries = jobs(args)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        # Longest first: with N at a time the last to start are the short ones, so the
        # workers end close together. The index keeps the plugins' order.
        order = sorted(range(len(todo)), key=lambda i: -todo[i].seconds)
        ran = dict(zip(order, pool.map(
            lambda i: run_job(todo[i], out, to_log=args.jobs > 1), order)))
    done = [ran[i] for i in range(len(todo))]
    index = write_index(out, [*done, *entries])
    print(f"index: {index}")
    failed = [e["name"] for e in done if e["status"].startswith("FAILED")]
    if failed:
        print(f"lorakit: error: demos failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
