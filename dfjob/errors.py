"""The one exception type the command line turns into `Error: …` and exit status 1."""

from __future__ import annotations


class DfjobError(Exception):
    """A refused request or a failure the user can act on; its message is one line."""


class DatabaseUnavailable(DfjobError):
    """The database could not be reached (the message never holds a password)."""
