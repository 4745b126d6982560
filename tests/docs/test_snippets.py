"""Every code block of README.md and docs/ runs as written (see snippets.py for which).

Each block runs in a fresh temporary working directory with one torch thread; a block
marked `<!-- snippet: skip (reason) -->` is skipped by name with that reason.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lorakit

from .snippets import ROOT, all_blocks, blocks_of, script_of

BLOCKS = [b for b in all_blocks() if b.runs or b.skip is not None]


def _params():
    for b in BLOCKS:
        marks = [pytest.mark.skip(reason=f"{b.name}: {b.skip}")] if b.skip is not None else []
        yield pytest.param(b, id=b.name, marks=marks)


@pytest.fixture
def fresh_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("LORAKIT_THREADS", "1")
    torch.set_num_threads(1)
    return tmp_path


@pytest.mark.parametrize("block", list(_params()))
def test_code_block_runs_as_written(block, fresh_cwd):
    if block.lang == "python":
        torch.manual_seed(0)
        code = compile(script_of(block), str(ROOT / block.path), "exec")
        exec(code, {"__name__": "__snippet__"})
        return
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script_of(block)], cwd=fresh_cwd,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{block.name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"


def test_every_skip_marker_gives_its_reason():
    unexplained = [b.name for b in all_blocks() if b.skip is not None and not b.skip.strip()]
    assert unexplained == []


def test_every_lorakit_command_block_is_run_or_skipped_by_name():
    # a bash block of lorakit commands is either executed or marked with a reason
    silent = [b.name for b in all_blocks() if b.lang == "bash" and b.runs and b.skip is None
              and "demo" in b.code]
    assert silent == [], "a demo in a block that runs: mark it skip with the reason"


def _quick_start():
    (block,) = [b for b in blocks_of(ROOT / "README.md")
                if b.lang == "python" and "minilm()" in b.code]
    return block


def _minilm_is_cached() -> bool:
    from lorakit.domains.downloads import cache_root
    return (cache_root(None) / "text" / "all-MiniLM-L6-v2" / "lorakit-source.json").is_file()


class _WordTokenizer:
    """Whitespace words -> ids, padded, as a transformers tokenizer's __call__ returns."""

    def __call__(self, texts, return_tensors="pt", padding=True):
        ids = [[1 + sum(map(ord, w)) % 90 for w in t.split()] for t in texts]
        width = max(map(len, ids))
        mask = [[1] * len(x) + [0] * (width - len(x)) for x in ids]
        ids = [x + [0] * (width - len(x)) for x in ids]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}


def test_readme_quick_start_runs_on_a_tiny_stand_in_for_minilm(fresh_cwd, monkeypatch):
    """The README's quick start as written, with `minilm()` returning a tiny BERT of the
    same class (the real one is fetched on first use: see the next test)."""
    from transformers import BertConfig, BertModel

    import lorakit.domains.text.minilm as minilm_module

    torch.manual_seed(0)
    tiny = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64,
                                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    monkeypatch.setattr(minilm_module, "minilm", lambda cache=None: (tiny.eval(), _WordTokenizer()))
    namespace = {"__name__": "__snippet__"}
    exec(compile(_quick_start().code, "README.md", "exec"), namespace)
    meta, tensors = lorakit.read_adapter(fresh_cwd / "minilm-lora.safetensors")
    assert meta["config"]["rank"] == 8 and len(meta["fingerprint"]) == 4   # q, v of 2 layers
    trained_b = [v for k, v in tensors.items() if k.endswith("lora_B")]
    assert trained_b and all(b.abs().sum() > 0 for b in trained_b)         # B left zero: no step
    assert namespace["adapters"].merged


@pytest.mark.skipif(not _minilm_is_cached(), reason="all-MiniLM-L6-v2 is not in the cache "
                    "(python -m lorakit.domains.text.fetch minilm fetches it)")
def test_readme_quick_start_runs_on_the_real_minilm_when_cached(fresh_cwd):
    exec(compile(_quick_start().code, "README.md", "exec"), {"__name__": "__snippet__"})
    size = (fresh_cwd / "minilm-lora.safetensors").stat().st_size
    assert size < 400_000, f"the adapter file is {size} bytes, the README says ~300 KB"


def test_readme_stays_a_landing_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


LAYOUT_PATH = re.compile(r"[\w<>.-]+(?:/[\w<>.-]*)*")


def _layout_paths() -> list[str]:
    """Every path the README's Layout section names, relative to the repository root.

    The layout is a tree: an entry at column 0 is a top-level folder or file, an entry
    indented by two is inside the last top-level folder, and the file names (x.py) and
    folders (x/) in an entry's description are inside that entry (when it is a folder)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1]
    tree = section.split("```", 2)[1].split("\n", 1)[1]
    paths, top, entry = [], "", ""
    for line in tree.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        head, _, rest = line.strip().partition(" ")
        if indent == 0:
            top = entry = head
            paths.append(head)
            words = rest
        elif indent == 2:
            entry = top + head
            paths.append(entry)
            words = rest
        else:
            words = line
        if entry.endswith("/"):
            for name in re.findall(r"(?<![\w/.`])([a-z_]+(?:\.py|/))(?=[\s,;:)]|$)", words):
                paths.append(entry + name)
        elif indent == 2 and head.endswith(".py"):       # `config.py errors.py ...`
            paths += [top + w for w in line.split() if w.endswith(".py")]
    return sorted(set(paths))


def _tracked() -> tuple[set[str], set[str]]:
    """(files, folders) that git tracks: the layout must match `git ls-files`, not
    whatever lies in a working tree."""
    done = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip("not a git checkout: git ls-files is what the layout is checked against")
    files = set(done.stdout.split())
    folders = {str(Path(f).parents[i]) for f in files for i in range(len(Path(f).parents) - 1)}
    return files, folders


def _exists(path: str, tracked) -> bool:
    """`path` is tracked; a `<placeholder>` folder stands for every tracked folder there
    (`plugins/<name>/module.py`: every plugin has one) and must match at least one."""
    files, folders = tracked
    head, sep, tail = path.partition("<")
    if not sep:
        return path.rstrip("/") in (folders if path.endswith("/") else files | folders)
    rest = tail.split(">", 1)[1].lstrip("/")
    base = head.rstrip("/")
    found = sorted(d for d in folders if str(Path(d).parent) == base
                   and not Path(d).name.startswith(("_", ".")))
    return bool(found) and all(_exists(f"{d}/{rest}", tracked) for d in found if rest)


def test_readme_layout_names_only_paths_that_exist():
    """Written against the target layout of issue 34 (core split by job, benchmarks in
    suites/common/studies, one plugin skeleton): it fails until that layout has merged."""
    tracked = _tracked()
    missing = [path for path in _layout_paths() if not _exists(path, tracked)]
    assert missing == [], f"the README's Layout names paths that do not exist: {missing}"
