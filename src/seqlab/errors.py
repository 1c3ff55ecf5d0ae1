"""The exceptions seqlab raises on bad input.

Every message is one line that says what is wrong and what to do about it. The CLI prints it
to stderr and exits with code 2; library callers catch :class:`SeqlabError` or a subclass.
"""


class SeqlabError(Exception):
    """Base class of every error seqlab raises on purpose."""


class ConfigError(SeqlabError, ValueError):
    """An unknown model name, config key or option, or a value of the wrong type or range."""


class DataError(SeqlabError, ValueError):
    """Input data that cannot be used: missing, empty, not text, too short, out of vocabulary."""


class CheckpointError(SeqlabError):
    """A checkpoint directory that is incomplete, corrupt, or names an unknown model."""


class TrainingError(SeqlabError):
    """Training cannot go on, e.g. the loss became NaN or infinite."""


class SeqlabWarning(UserWarning):
    """Something the user should know that does not stop the work (the CLI prints one line)."""
