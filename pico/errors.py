"""Expected failures: the CLI turns these into one clear message and a non-zero exit."""


class BadDocumentError(ValueError):
    """Strict mode: a line that is not a usable document (the message names file and line)."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class TrainingFailed(RuntimeError):
    """The training processes (torchrun) did not finish."""
