"""Two kinds of failure, kept apart: a user's mistake is a `SubtuneError` (one line, exit 1,
no traceback unless --debug); anything else is a bug and keeps its traceback."""


class SubtuneError(Exception):
    """Bad input or an unavailable capability: the message says what was expected, what was
    found and what to do."""


class VerificationError(SubtuneError):
    """The compiled graph does not match the PyTorch reference within tolerance."""
