"""Exceptions that name the file and the problem, so bad input never ends deep inside numpy."""


class NucleiError(Exception):
    """Base class of the project's own errors."""


class DataError(NucleiError, ValueError):
    """An input file is missing, unreadable or inconsistent; the message names the file."""


class SubmissionError(NucleiError, ValueError):
    """A submission CSV is malformed; the message names the line and the reason."""


class ConfigError(NucleiError, ValueError):
    """A config file has an unknown key or a bad value."""
