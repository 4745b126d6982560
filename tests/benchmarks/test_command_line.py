"""The suite command line every suite shares, and the layout of benchmarks/suites."""
import ast
import json
from importlib.metadata import entry_points
from pathlib import Path

from lorakit.benchmarks.common.command_line import suite_main
from lorakit.registry import BENCH_GROUP, plugins

ROOT = Path(__file__).resolve().parents[2]
SUITES = ROOT / "benchmarks" / "suites"


def test_suite_main_runs_the_suite_as_lorakit_bench_does(tmp_path, capsys):
    calls = []

    def run(out_dir, threads=1, quick=False, size="small"):
        calls.append((out_dir, threads, quick, size))
        return {"figures": {"speedup": 2.0}, "rows": [{"size": size}], "notes": "n"}

    result = suite_main("toy", "doc", run, ["--out", str(tmp_path), "--quick",
                                            "--size", "big"],
                        options=lambda p: p.add_argument("--size", default="small"),
                        keywords=lambda a: {"size": a.size},
                        name=lambda a: f"toy-{a.size}")
    assert calls == [(tmp_path, 1, True, "big")]
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["suite"] == result["suite"] == "toy-big"
    assert written["figures"] == {"speedup": 2.0}
    assert (tmp_path / "report.md").is_file()
    assert json.loads(capsys.readouterr().out) == {"speedup": 2.0}


def test_suite_main_defaults_out_to_reports_suite_and_a_worker_replaces_the_run(tmp_path):
    calls, worked = [], []

    def worker(a):
        worked.append((a.out, a.threads, a.job))
        return a.job is not None

    def options(p):
        p.set_defaults(threads=2)
        p.add_argument("--job")

    assert suite_main("toy", "doc", lambda *a: calls.append(a), ["--job", "x"],
                      options=options, worker=worker) is None
    assert worked == [("reports/toy", 2, "x")] and calls == []


def _registered() -> dict[str, str]:
    """Suite name -> dotted path: the installed entry points (pyproject.toml's, after
    `pip install -e .`) and every plugin's suite, installed or not."""
    found = {ep.name: ep.value for ep in entry_points(group=BENCH_GROUP)}
    found.update({name: p.bench_suite for name, p in plugins().items() if p.bench_suite})
    return found


def test_every_registered_suite_is_a_run_function_of_one_file_in_suites():
    for name, dotted in _registered().items():
        module, _, function = dotted.partition(":")
        assert module.startswith("lorakit.benchmarks.suites."), (name, dotted)
        path = SUITES / (module.rsplit(".", 1)[1] + ".py")
        assert path.is_file(), (name, dotted)
        defined = {n.name for n in ast.parse(path.read_text()).body
                   if isinstance(n, ast.FunctionDef)}
        assert function in defined, (name, dotted)


def test_every_file_in_suites_is_a_registered_suite_or_a_part_of_one():
    named = {dotted.partition(":")[0].rsplit(".", 1)[1] for dotted in _registered().values()}
    files = {p.stem for p in SUITES.glob("*.py")} - {"__init__"}
    parts = {"core_mixed_batches"}           # the core suite's second half
    assert files - parts == named
