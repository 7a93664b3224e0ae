"""JSON decoding in a child process, for messages big enough to stall the daemon's loop.

A thread does not help there: ``orjson.loads`` of 7 MB (~70 ms) and numpy's conversion of its
lists (~60 ms) are single C calls that hold the GIL throughout, and the loop waits for them.
In a child process they hold another interpreter's GIL; what comes back is cheap to unpickle:
long lists of numbers come back as float64 arrays (a copy of their bytes), which the server's
checks take as they are.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np
import orjson

ARRAY_MIN = 1024  # numbers in a list below which it stays a list
_NUMBERS = frozenset({int, float})


def loads(data: str | bytes) -> Any:
    """The decoded JSON, long lists of numbers as float64 arrays; ``ValueError`` (without the
    document: it would be sent back too) when it is not JSON."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(str(exc)) from None
    return _arrays(value)


def _arrays(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _arrays(v) for k, v in value.items()}
    if not isinstance(value, list):
        return value
    if len(value) >= ARRAY_MIN or (value and isinstance(value[0], list)):
        size = _numeric_size(value)
        if size >= ARRAY_MIN:
            try:
                return np.asarray(value, dtype=np.float64)
            except ValueError:  # ragged: the server's check names it
                return value
    return [_arrays(v) for v in value]


def _numeric_size(value: list[Any]) -> int:
    """How many numbers a nested list of only numbers holds (0 when it holds anything else,
    ``true`` included): one pass per nesting level, as the server's ``numbers_only``."""
    level: list[Any] = value
    for _ in range(5):
        kinds = set(map(type, level))
        if kinds <= _NUMBERS:
            return len(level)
        if kinds != {list}:
            return 0
        level = list(chain.from_iterable(level))
    return 0
