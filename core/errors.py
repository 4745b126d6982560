"""The exceptions lorakit raises at its edges.

Every message is written for a person: what was wrong, in which file, record or
module, and what to do about it. The CLI prints these without a stack trace.
"""


class LoraKitError(Exception):
    """Base of every error lorakit raises on purpose."""


class TargetNotFoundError(LoraKitError):
    """A target pattern matched no module of the model."""


class AdapterFileError(LoraKitError):
    """An adapter file is missing, truncated, corrupt or not a lorakit adapter."""


class AdapterMismatchError(LoraKitError):
    """An adapter was made for another base model."""


class DataError(LoraKitError):
    """Input data (a file, a record, a manifest line) is malformed."""


class CheckpointError(LoraKitError):
    """A base-model checkpoint is missing, truncated or of the wrong kind."""
