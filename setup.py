"""Lists the packages under the folder mapping of pyproject.toml.

pyproject.toml maps core/ to `lorakit`, plugins/ to `lorakit.plugins`, domains/ to
`lorakit.domains` and benchmarks/ to `lorakit.benchmarks`; setuptools' own finder
would name them `core`, `plugins`, ..., so the sub-packages are listed here.
"""
from pathlib import Path

from setuptools import setup

ROOTS = {"core": "lorakit", "plugins": "lorakit.plugins",
         "domains": "lorakit.domains", "benchmarks": "lorakit.benchmarks"}


def packages() -> list[str]:
    found = []
    for folder, name in ROOTS.items():
        for init in sorted(Path(folder).rglob("__init__.py")):
            rel = init.parent.relative_to(folder).parts
            found.append(".".join((name, *rel)))
    return found


setup(packages=packages())
