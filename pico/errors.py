"""Expected failures: the CLI turns these into one clear message and a non-zero exit."""


class ConfigError(ValueError):
    """A params file that cannot be used; the message names the key and the value (exit 2)."""


class BadDocumentError(ValueError):
    """Strict mode: a line that is not a usable document (the message names file and line)."""


class PipelineError(RuntimeError):
    """A failure the pipeline expects and explains in its message (the base of the ones below)."""


class TrainingDiverged(PipelineError):
    """The training loss became NaN or infinite."""


class TrainingFailed(PipelineError):
    """The training processes (torchrun) did not finish."""


class TrainingInterrupted(RuntimeError):
    """The trainer stopped on request (SIGTERM, SIGINT, its DVC gone) with its progress saved;
    ``exit_code`` is 128 + the signal's number, as a shell reports a signalled process."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
