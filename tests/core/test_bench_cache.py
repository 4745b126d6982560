"""`lorakit.reports.bench.cached`: a suite's runs are read back instead of computed again, and a
run made with other settings is computed again."""
import json

from lorakit.reports.bench import cached


def counting(result):
    calls = []

    def compute():
        calls.append(1)
        return result
    return compute, calls


def test_cached_runs_are_read_back_instead_of_computed_again(tmp_path):
    compute, calls = counting({"wer": 0.25})
    path = tmp_path / "runs" / "x" / "test.json"
    assert cached(path, compute) == {"wer": 0.25} and path.is_file()
    assert cached(path, compute) == {"wer": 0.25} and len(calls) == 1


def test_a_run_with_other_settings_is_computed_again_and_replaced(tmp_path):
    path = tmp_path / "row.json"
    first, _ = counting({"mcc": 0.9})
    assert cached(path, first, {"lr": 1e-3}) == {"mcc": 0.9}
    again, calls = counting({"mcc": 0.5})
    assert cached(path, again, {"lr": 1e-3}) == {"mcc": 0.9} and not calls
    assert cached(path, again, {"lr": 2e-3}) == {"mcc": 0.5} and len(calls) == 1
    assert json.loads(path.read_text()) == {"settings": {"lr": 2e-3}, "result": {"mcc": 0.5}}


def test_a_plain_file_is_not_taken_for_a_run_with_settings(tmp_path):
    path = tmp_path / "row.json"
    path.write_text(json.dumps({"mcc": 0.9}))
    compute, calls = counting({"mcc": 0.7})
    assert cached(path, compute, {"seed": 0}) == {"mcc": 0.7} and len(calls) == 1


def test_settings_are_compared_as_stored_so_a_tuple_matches_its_list(tmp_path, capsys):
    path = tmp_path / "row.json"
    first, _ = counting({"acc": 0.8})
    cached(path, first, {"strategies": ("fedavg", "ffa")})
    again, calls = counting({"acc": 0.1})
    assert cached(path, again, {"strategies": ("fedavg", "ffa")}) == {"acc": 0.8} and not calls
    cached(path, again, {"strategies": ("fedsb",)})
    assert len(calls) == 1 and "made with other settings" in capsys.readouterr().out
