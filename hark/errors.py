"""Errors a person can act on: each says what went wrong and how to fix it."""


class HarkError(Exception):
    """Base class. ``str(err)`` is shown to the user as is."""

    def __init__(self, message: str, fix: str | None = None):
        self.fix = fix
        super().__init__(message if not fix else f"{message}\n  fix: {fix}")


class ConfigError(HarkError):
    pass


class ModelError(HarkError):
    """A model is missing, corrupt, or failed to load."""


class AudioError(HarkError):
    """Unreadable, truncated or unsupported audio."""


class NoSpeechError(HarkError):
    """The input held no speech."""


class ProtocolError(HarkError):
    """A malformed or unexpected message from the network."""
