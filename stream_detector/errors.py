"""The one error type users see: a one-line message naming the problem, printed by the CLI."""


class StreamDetectorError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""


class ConfigError(StreamDetectorError):
    """A configuration file or option that cannot be used; the message starts with the key path."""


class SourceError(StreamDetectorError):
    """A frame source that cannot be opened or that disappeared (camera gone, bad URL, corrupt file)."""


class ModelError(StreamDetectorError):
    """A model file that is missing, corrupt or of the wrong shape."""
