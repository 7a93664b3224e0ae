"""Errors the learning core raises for bad input, so callers can map them to 422 answers."""

from __future__ import annotations


class DataError(ValueError):
    """Training or prediction data that cannot be used, with a message a user can act on.

    Subclasses ValueError so code that already catches ValueError keeps working.
    """
