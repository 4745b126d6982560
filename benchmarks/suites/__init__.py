"""The registered benchmark suites, one file per suite, each with
`run(out_dir, threads=1, quick=False) -> dict` (see lorakit.reports.bench). The core's suites are
entry points of the group `lorakit.benchmarks`; a plugin names its own suite in its
`Plugin.bench_suite`."""
