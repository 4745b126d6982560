"""What lorakit's own runs print: its messages and real warnings, not library noise.

The `lorakit` command and the benchmark runner call `quiet_third_party()` once; it
drops Lightning's product adverts and a short list of third-party warnings that every
run prints and no user can act on, each matched by message, category and module.
"""
from __future__ import annotations

import logging
import warnings


class _DropLightningTips(logging.Filter):
    """Lightning logs adverts for its cloud products ("💡 Tip: ... litlogger / litmodels")
    at INFO on every fit, with no setting to turn them off; its other INFO lines stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


# (message, category, module) of third-party warnings that every run prints and that no
# lorakit user can act on; each is matched exactly, so a warning about the user's own
# input or settings still shows.
KNOWN_NOISE = [
    # Lightning's own code calls torch's deprecated LeafSpec (torch >= 2.10)
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning,
     r"lightning\.pytorch\.utilities\._pytree"),
    # a note on Lightning 1.9's dependency change, printed whenever the default logger is used
    (r"Starting from v1\.9\.0, `tensorboardX` has been removed", UserWarning,
     r"lightning\.pytorch\.trainer\.connectors\.logger_connector"),
    # mini-dust3r's CPU path calls the deprecated torch.cuda.amp.autocast(enabled=False)
    (r"`torch\.cuda\.amp\.autocast\(args\.\.\.\)` is deprecated", FutureWarning,
     r"mini_dust3r\."),
    # lorakit hands LightningCLI its share of the command line on purpose (the plugin name
    # is ours); Lightning's warning against args and sys.argv together does not apply
    (r"LightningCLI's args parameter is intended", UserWarning, r"lightning\.pytorch\.cli"),
]


def quiet_third_party() -> None:
    """Keep lorakit's output (the command, a benchmark run) to its own messages and real
    warnings."""
    for message, category, module in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLightningTips) for f in logger.filters):
            logger.addFilter(_DropLightningTips())
