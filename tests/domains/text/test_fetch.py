import pytest

from lorakit import DataError
from lorakit.domains.text import fetch


def test_fetch_runs_the_named_items_in_order(monkeypatch, capsys, tmp_path):
    ran = []
    monkeypatch.setattr(fetch, "ITEMS", {
        "a": lambda cache: ran.append(("a", cache)) or "done a",
        "b": lambda cache: ran.append(("b", cache)) or "done b"})
    assert fetch.main(["b", "a", "--cache", str(tmp_path)]) == 0
    assert ran == [("b", str(tmp_path)), ("a", str(tmp_path))]
    assert capsys.readouterr().out.splitlines()[0].startswith("b: done b (")
    ran.clear()
    assert fetch.main(["--all"]) == 0 and [n for n, _ in ran] == ["a", "b"]


def test_fetch_prints_the_loaders_error_without_a_traceback(monkeypatch, capsys):
    def broken(cache):
        raise DataError("x.deb has sha256 1, the pinned one is 2")
    monkeypatch.setattr(fetch, "ITEMS", {"wordnet": broken})
    assert fetch.main(["wordnet"]) == 1
    assert capsys.readouterr().err == "wordnet: x.deb has sha256 1, the pinned one is 2\n"


@pytest.mark.parametrize("argv", [[], ["minilm", "bert"]])
def test_fetch_asks_for_known_items(argv, capsys):
    with pytest.raises(SystemExit):
        fetch.main(argv)
    assert "name what to fetch (minilm, smollm2, sentiment, wordnet, austen)" in \
        capsys.readouterr().err
