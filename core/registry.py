"""The plugin registry: plugins are found through the entry-point group `lorakit.plugins`.

A plugin package registers a `Plugin` object:

    [project.entry-points."lorakit.plugins"]
    my-domain = "my_package.plugin:PLUGIN"

Its classes are named by dotted path, not imported, so `lorakit plugins` can list
a plugin whose optional dependencies are missing and say how to install them, and
`lorakit <plugin> --help` answers without torch: a plugin's `__init__` imports nothing
but this module. Benchmark suites are found the same way, under `lorakit.benchmarks`,
and listed by their entry-point names without importing them.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

from .errors import LoraKitError

PLUGIN_GROUP = "lorakit.plugins"
BENCH_GROUP = "lorakit.benchmarks"


def resolve(dotted: str):
    """'package.module:attr' (or 'package.module.attr') to the object it names."""
    module, _, attr = dotted.partition(":") if ":" in dotted else dotted.rpartition(".")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Command(str):
    """A plugin's extra sub-command: the dotted path of its `main(argv)`, with the one-line
    help that `lorakit <plugin> --help` shows (a plain dotted-path string also works)."""

    help: str

    def __new__(cls, target: str, help: str = ""):
        command = super().__new__(cls, target)
        command.help = help
        return command


@dataclass
class Plugin:
    name: str
    summary: str
    module: str = field(metadata={"help": "dotted path of the LightningModule class"})
    datamodule: str = field(metadata={"help": "dotted path of the LightningDataModule class"})
    default_config: str = field(metadata={"help": "path of the default YAML config"})
    demo: str = field(metadata={"help": "dotted path of demo(out_dir: Path, threads: int) -> dict"})
    extra: str = ""
    requires: tuple[str, ...] = ()
    bench_suite: str | None = None
    demo_seconds: float = field(default=60.0, metadata={
        "help": "typical wall time of the demo on one thread; `lorakit demo` starts the "
                "longest first, so parallel jobs end close together"})
    commands: dict[str, str] = field(default_factory=dict, metadata={
        "help": "extra sub-commands (name -> dotted path of main(argv), a Command for help)"})

    @property
    def installed(self) -> bool:
        return all(importlib.util.find_spec(name) is not None for name in self.requires)

    @property
    def install_hint(self) -> str:
        return f"pip install 'lorakit[{self.extra}]'" if self.extra else ""

    def require(self) -> None:
        if not self.installed:
            missing = [n for n in self.requires if importlib.util.find_spec(n) is None]
            raise LoraKitError(f"plugin {self.name!r} needs {', '.join(missing)}: "
                               f"{self.install_hint or 'install its dependencies'}")

    def load(self, what: str):
        self.require()
        return resolve(getattr(self, what))

    def config_path(self) -> Path:
        return Path(self.default_config)


def _entries(group: str) -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=group)}


def _load(name: str, ep) -> Plugin:
    try:
        plugin = ep.load()
    except Exception as err:
        raise LoraKitError(f"plugin entry point {name!r} ({ep.value}) failed to load: "
                           f"{err}") from None
    if not isinstance(plugin, Plugin):
        raise LoraKitError(f"plugin entry point {name!r} ({ep.value}) is a "
                           f"{type(plugin).__name__}, not a lorakit.registry.Plugin")
    return plugin


def plugin_names() -> list[str]:
    """The registered plugins' entry-point names, without loading any of them."""
    return sorted(_entries(PLUGIN_GROUP))


def plugins() -> dict[str, Plugin]:
    """Every installed plugin by name; a broken registration raises a clear error."""
    found = {}
    for name, ep in sorted(_entries(PLUGIN_GROUP).items()):
        plugin = _load(name, ep)
        found[plugin.name] = plugin
    return found


def get_plugin(name: str) -> Plugin:
    """The plugin called `name`; only its own entry point is loaded when it is named so."""
    entries = _entries(PLUGIN_GROUP)
    if name in entries:
        plugin = _load(name, entries[name])
        if plugin.name == name:
            return plugin
    found = plugins()
    if name not in found:
        raise LoraKitError(f"no plugin named {name!r}; installed: {', '.join(found) or 'none'}")
    return found[name]


def bench_suites() -> dict[str, str]:
    """Suite name -> dotted path of its `run(out_dir, threads, quick)` function."""
    suites = {name: ep.value for name, ep in _entries(BENCH_GROUP).items()}
    for plugin in plugins().values():
        if plugin.bench_suite and plugin.installed:
            suites.setdefault(plugin.name, plugin.bench_suite)
    return suites
