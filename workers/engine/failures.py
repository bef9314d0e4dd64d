"""Errors the engine raises; messages are meant to be shown to the user as-is."""


class EngineError(Exception):
    """A training job failed for a reason the user can act on."""


class ConfigError(EngineError):
    """The job spec has inconsistent or out-of-range values."""


class CorpusError(EngineError):
    """The corpus file cannot be used for training (empty, malformed or too small)."""


class StopRequested(Exception):
    """Reporter.should_stop() said yes while the data was being prepared (no meta.json)."""
