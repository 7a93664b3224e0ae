"""What the CLI's commands print, and the codes they exit with (README: "Exit codes").

Every command prints a compact text table by default and its result as JSON with ``--json``;
errors go to stderr as ``mliot COMMAND: message``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

EXIT_OK = 0
EXIT_FAILED = 1  # `mliot doctor`: a check failed (and `mliot run`: the daemon failed)
EXIT_USAGE = 2  # bad arguments: argparse's own code, and files the command cannot use
EXIT_UNREACHABLE = 3  # no answer from the daemon: refused, reset, timed out
EXIT_REJECTED = 4  # the daemon answered with an error; check-config: the file is invalid

MAX_CELL = 48  # a longer cell (a list of classes, say) is cut with "..."


class UsageError(ValueError):
    """The command line asks for something the command cannot do (exit 2)."""


def fail(command: str, message: object, code: int) -> int:
    """Print ``mliot COMMAND: message`` to stderr; returns ``code`` for the exit."""
    print(f"mliot {command}: {message}", file=sys.stderr)
    return code


def table(rows: Iterable[Sequence[Any]], header: Sequence[str] | None = None,
          max_cell: int | None = MAX_CELL) -> str:
    """Rows as aligned columns (two spaces apart); ``None`` shows as ``-``, a cell longer
    than ``max_cell`` is cut. Without a header it is a list of ``key  value`` lines."""
    cells = [[_cell(v, max_cell) for v in row]
             for row in ([header] if header else []) + list(rows)]
    if not cells:
        return ""
    widths = [max(len(row[i]) for row in cells if i < len(row))
              for i in range(max(map(len, cells)))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
                     for row in cells)


def emit(result: Any, as_json: bool, render: Callable[[Any], str],
         out: TextIO | None = None) -> int:
    """Print a command's result: JSON with ``--json``, else ``render(result)``; exit 0."""
    text = json.dumps(result, indent=2) if as_json else render(result)
    if text:
        print(text, file=out or sys.stdout, flush=True)
    return EXIT_OK


def _cell(value: Any, max_cell: int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):  # 3 decimals at most: 0.953, 12.5, 1200
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, list | tuple):
        value = ",".join(map(str, value))
    text = str(value)
    return text if max_cell is None or len(text) <= max_cell else text[:max_cell - 3] + "..."
