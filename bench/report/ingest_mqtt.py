"""Ingest and MQTT: no table or plot yet, so their sections list the result's figures as JSON."""

from __future__ import annotations

import json
from typing import Any

from bench.report.common import header

# What every result file carries besides its figures (bench/__main__.py adds these).
RUN_KEYS = ("name", "quick", "machine", "wall_s")


def _listed(r: dict[str, Any], title: str, keys: list[str]) -> list[str]:
    out = header(r, title)
    for k in keys:
        if k in r:
            out.append(f"- `{k}`: {json.dumps(r[k])}")
    return out + [""]


def ingest(r: dict[str, Any]) -> list[str]:
    return _listed(r, "Ingest", ["samples_per_s", "batch_latency_ms", "loop_lag_ms", "targets"])


def mqtt(r: dict[str, Any]) -> list[str]:
    return _listed(r, "MQTT", [k for k in r if k not in RUN_KEYS])
