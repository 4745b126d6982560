"""What a non-editable install keeps: setup.py lists packages by their `__init__.py`, so a
folder of modules without one would be silently left out of a wheel."""
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_folder_of_python_modules_is_a_package():
    tracked = subprocess.run(["git", "ls-files", "core", "plugins", "domains", "benchmarks"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    folders = {Path(f).parent for f in tracked if f.endswith(".py")}
    missing = sorted(str(d) for d in folders if not (ROOT / d / "__init__.py").is_file())
    assert missing == [], f"folders of modules without __init__.py: {missing}"
