"""A third-party plugin, registered only through its own dist-info entry points.

Its registration imports nothing heavy (the classes are named by dotted path), as a
plugin's `__init__` should: `lorakit plugins` and `lorakit toy --help` stay quick.
"""
from pathlib import Path

from lorakit.registry import Plugin

PLUGIN = Plugin(name="toy", summary="a third-party toy plugin", module="toy_plugin.module:ToyModule",
                datamodule="toy_plugin.module:ToyData",
                default_config=str(Path(__file__).parent.with_name("toy.yaml")),
                demo="toy_plugin.module:demo", extra="", requires=("torch",),
                bench_suite="toy_plugin.module:bench")
