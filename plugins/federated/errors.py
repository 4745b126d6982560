"""What a federated run refuses or fails with: lorakit errors, each one line that names the
setting, the client or the round and says what to do (the CLI prints them without a stack
trace). They are ValueErrors or RuntimeErrors too, as the checks they replace raised."""
from lorakit.errors import LoraKitError


class RunConfigError(LoraKitError, ValueError):
    """A run setting has a value it cannot take (the message names its run-config key)."""


class ClientError(LoraKitError, RuntimeError):
    """A client cannot do its part of a round (the message names the client)."""


class RunError(LoraKitError, RuntimeError):
    """A run cannot go on or its engine failed: a round with no usable reply, a Flower
    process that exited (the message names the round or the log to read)."""
