"""The docs site builds with `mkdocs build --strict`: a broken link, a page missing from
the nav, an API reference entry that names nothing, or a plugin README that an
include points at and that is gone, fails here."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_docs_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (it comes with the dev extra: "
                        "pip install -e '.[dev]')")
    pytest.importorskip("material", reason="mkdocs-material is not installed (dev extra)")
    pytest.importorskip("mkdocstrings_handlers.python",
                        reason="mkdocstrings-python is not installed (dev extra)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_MKDOCS_2_WARNING": "1"}
    # `python -m mkdocs`: run as the console script, sys.path[0] would be the venv's bin/,
    # where mkdocstrings would take the `lorakit` script for the package
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "index.html").is_file()
    assert "lorakit.attach" in (tmp_path / "site" / "reference" / "index.html").read_text()
