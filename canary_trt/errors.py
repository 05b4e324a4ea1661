"""The errors a user can act on. Their message names what was wrong and how to fix it; the CLIs print
them without a traceback. Anything else is a bug and keeps its traceback."""

from __future__ import annotations


class CanaryError(Exception):
    """A user-facing error."""


class InvalidInput(CanaryError, ValueError):
    """A bad option, argument, file content, configuration or audio."""


class MissingFile(CanaryError, FileNotFoundError):
    """A file, folder, package or tool that is not there."""
