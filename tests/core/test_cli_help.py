"""What the `lorakit` command answers before it runs anything: help, and bad options."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lorakit.cli import main
from lorakit.registry import get_plugin, plugin_names

TOY = Path(__file__).with_name("toy_plugin_dist")
HEAVY = ("torch", "lightning", "transformers", "safetensors")


def modules_after(argv: list[str]) -> list[str]:
    """Run `lorakit ARGV` in a fresh interpreter; the heavy packages it imported."""
    script = ("import json, sys\nfrom lorakit.cli import main\n"
              f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
              f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["plugins"], ["bench", "--help"],
                                  ["adapter", "--help"], ["serve", "--help"],
                                  *([name, "--help"] for name in plugin_names())], ids=" ".join)
def test_help_and_plugin_listing_import_neither_torch_nor_lightning(argv):
    assert modules_after(argv) == []


def help_text(capsys, *argv) -> str:
    try:
        code = main(list(argv))
    except SystemExit as done:  # argparse and LightningCLI exit after printing help
        code = done.code
    assert code == 0
    return capsys.readouterr().out


def commands_listed(text: str) -> dict[str, str]:
    """COMMAND -> its help, from an argparse help text's command list."""
    listed, name = {}, None
    for line in text.split("COMMAND\n", 1)[1].split("\n\n")[0].splitlines():
        m = re.match(r"^ {4}(\S+)\s*(.*)$", line)
        if m:
            name = m.group(1)
            listed[name] = m.group(2)
        elif name:
            listed[name] += " " + line.strip()
    return listed


@pytest.mark.parametrize("name", plugin_names())
def test_plugin_help_describes_every_command(name, capsys):
    plugin = get_plugin(name)
    listed = commands_listed(help_text(capsys, name, "--help"))
    assert set(listed) == {"fit", "validate", "test", "predict", "demo", *plugin.commands}
    assert all(len(text.split()) >= 3 for text in listed.values()), listed


def test_top_help_lists_commands_and_bench_help_lists_the_registered_suites(capsys):
    top = commands_listed(help_text(capsys, "--help"))
    assert set(top) == {"plugins", "demo", "bench", "adapter", "serve"}
    bench = " ".join(help_text(capsys, "bench", "--help").split())
    for suite in ("core", "variants", "merge", "moe", "serving", "lorabert"):
        assert re.search(rf"\b{suite}\b", bench.split("Registered suites:", 1)[1])


def undocumented_options(text: str) -> list[str]:
    """Options of a jsonargparse --help text whose entry holds no words beyond the
    '(type: ..., default: ...)' that jsonargparse adds to every option."""
    entries, current = [], None
    for line in text.split("\noptions:\n", 1)[1].splitlines():
        m = re.match(r"^  (-\S.*?)(?: {2,}(.*))?$", line)
        if m:
            current = [m.group(1), m.group(2) or ""]
            entries.append(current)
        elif current and line.startswith("   "):
            current[1] += " " + line.strip()
        else:
            current = None
    missing = []
    for signature, description in entries:
        described = re.sub(r"\((required, )?(type|default): .*\)\s*$", "", description.strip())
        if not described.strip():
            missing.append(re.findall(r"--[\w.+-]+", signature)[0])
    return missing


def fit_help(capsys, monkeypatch, name):
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.syspath_prepend(str(TOY))
    plugin = get_plugin(name)
    if not plugin.installed:
        pytest.skip(f"{name} is not installed: {plugin.install_hint}")
    return help_text(capsys, name, "fit", "--help")


@pytest.mark.parametrize("name", ["toy", *plugin_names()])
def test_fit_help_names_the_plugin_command_and_describes_every_option(name, capsys,
                                                                      monkeypatch):
    text = fit_help(capsys, monkeypatch, name)
    assert text.startswith(f"usage: lorakit {name} fit ")
    assert undocumented_options(text) == []


def test_the_undocumented_option_check_sees_an_option_without_words():
    text = ("usage: x\n\noptions:\n  --a A                 Rank of the update. (type: int, "
            "default: 8)\n  --b B                 (type: int, default: 16)\n  --c C\n"
            "                        (required, type: str)\n  --d D\n"
            "                        The file to read. (type:\n                        str)\n")
    assert undocumented_options(text) == ["--b", "--c"]


def bad_fit(capsys, monkeypatch, *argv) -> str:
    monkeypatch.syspath_prepend(str(TOY))
    with pytest.raises(SystemExit) as done:
        main(["toy", "fit", *argv])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_misspelled_fit_option_is_one_line_naming_the_closest_option(capsys, monkeypatch):
    err = bad_fit(capsys, monkeypatch, "--trainer.max_stepz", "3")
    assert err == ("lorakit: error: unknown option --trainer.max_stepz; did you mean "
                   "--trainer.max_steps?")


def test_abbreviated_fit_options_are_refused_not_expanded(capsys, monkeypatch):
    err = bad_fit(capsys, monkeypatch, "--trainer.max_step", "3")
    assert err == ("lorakit: error: unknown option --trainer.max_step; did you mean "
                   "--trainer.max_steps?")
    err = bad_fit(capsys, monkeypatch, "--model.wid=8")
    assert err == "lorakit: error: unknown option --model.wid; did you mean --model.width?"


def test_lorakits_own_commands_refuse_misspelled_and_abbreviated_options(capsys, tmp_path):
    assert main(["bench", "--suit", "core"]) == 2
    assert capsys.readouterr().err == ("lorakit: error: unknown option --suit; did you mean "
                                       "--suite?\n")
    assert main(["adapter", "inspect", str(tmp_path / "a.safetensors"), "--js"]) == 2
    assert capsys.readouterr().err == ("lorakit: error: unknown option --js; did you mean "
                                       "--json?\n")
    assert main(["plugin"]) == 2
    assert capsys.readouterr().err.endswith("; did you mean plugins?\n")
    assert main(["lorabert", "fitt"]) == 2
    assert capsys.readouterr().err == ("lorakit: error: lorabert has no command 'fitt'; did "
                                       "you mean fit?\n")
