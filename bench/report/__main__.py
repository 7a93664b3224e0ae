"""``python -m bench.report``: regenerate bench/RESULTS.md and the plots."""

from __future__ import annotations

from bench.report.document import main

if __name__ == "__main__":
    raise SystemExit(main())
