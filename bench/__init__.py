"""Benchmarks: `python -m bench <name> [--quick]` writes bench/results/<name>.json.

One module per benchmark (``run(quick) -> dict``), helpers beside them (``common``,
``daemon_proc``, ``lean_client``, ``datasets``, ``competitors``), and ``report`` (RESULTS.md
from the JSON). They may import the product (a daemon is started as a subprocess; the learning
library is called in child processes) and the bench extras; the product never imports them.
"""
