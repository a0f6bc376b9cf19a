"""The errors a user can fix: the scripts print them as one line and exit with status 2."""

from __future__ import annotations


class SweepError(Exception):
    """A problem the user can fix (bad grid, unreachable store, nothing to resume)."""


class ResultsError(SweepError):
    """No such experiment or sweep in the tracking store."""
