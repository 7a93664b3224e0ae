"""Generate bench/RESULTS.md and the PNG plots from bench/results/*.json.

Usage: ``python -m bench.report``. Every number in RESULTS.md is read from the JSON files;
nothing is typed by hand. A benchmark whose JSON is missing is listed as not run.

What this package owns: turning result files into text and plots, nothing else. It never runs
a benchmark, and it must not import the product (``mliot_daemon``), the ``actors/`` tree or
the benchmark modules next to it: a report has to be regenerable from the JSON alone, on a
machine with only numpy and matplotlib. It may import the standard library (json, pathlib,
collections), numpy and matplotlib.

Layout: ``document`` assembles the file (intro, targets summary, the sections in order);
``common`` holds what several sections share (paths, loading a result, the section header
with the machine and its load, verdicts, saving a plot). Every other module renders the
section of the benchmark of the same name (``bench/<name>.py``) as ``section(result)``, which
returns the section's Markdown lines and writes its plot, if it has one, to bench/results/.
``ingest_mqtt`` holds the two sections that only list their figures (``ingest``, ``mqtt``).
"""

from __future__ import annotations

from bench.report.document import main

__all__ = ["main"]
