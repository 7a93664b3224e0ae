"""Issue 18: stream apps — readings ingest, window-to-prediction latency, load, storage."""

from __future__ import annotations

from typing import Any

from bench.report.common import header, table_head, verdict

INTRO = """A stream app is fed readings; the daemon cuts windows on their timestamps, predicts
each as it completes and publishes the debounced activity. Ingest: WebSocket batches of 1,000
readings over 20 channels, 8 in flight, each acknowledged after its commit. Latency: a trained
two-channel app (2 s windows every 0.5 s, 10 Hz) fed live; a window closes when the first
reading past its end arrives, so the time from its last reading to its prediction includes
the 0.1 s until the next one. Load: 4 apps x 20 channels x 10 Hz, each predicting a window a
second. Storage: a 10 Hz series with one decimal, as written (a block per channel and batch)
and after the hourly compaction."""


def section(r: dict[str, Any]) -> list[str]:
    out = header(r, "Stream apps (readings, windows, activity)", INTRO)
    ing, lat, load, st = r["ingest"], r["latency"], r["load"], r["storage"]
    p50 = lat["last_reading_to_prediction_ms"]["p50"]
    bound = lat["hop_s"] * 1000 + 50
    out += table_head("measure", "value", "target", "verdict")
    out += [
        f"| readings ingest (WebSocket) | {ing['readings_per_s']:,} readings/s | ≥ 50,000 | "
        f"{verdict(ing['readings_per_s'] >= 50_000)} |",
        f"| last reading of a window → its prediction, p50 / p99 | {p50} / "
        f"{lat['last_reading_to_prediction_ms']['p99']} ms | p50 ≤ hop_s + 50 ms = "
        f"{bound:g} ms | {verdict(p50 <= bound)} |",
        f"| window end → its prediction, p50 / p99 | "
        f"{lat['window_end_to_prediction_ms']['p50']} / "
        f"{lat['window_end_to_prediction_ms']['p99']} ms | | |",
        f"| windows predicted / expected | {lat['windows']} / {lat['expected']} | | |",
        f"| main process with {load['apps']} apps x {load['channels']} channels x "
        f"{load['hz']:g} Hz | {load['main_process_cpu_percent']} % CPU, "
        f"{load['rss_mib']} MiB RSS (+{load['rss_growth_mib']} MiB during the run) | | |",
        f"| storage per channel-day, written / compacted | "
        f"{st['bytes_per_channel_day_written'] / 2**20:.1f} / "
        f"{st['bytes_per_channel_day_compacted'] / 2**20:.1f} MiB "
        f"({st['bytes_per_reading_compacted']} bytes a reading) | | |",
        f"| 20 channels at 10 Hz for 14 days (240 M readings), compacted | "
        f"{st['projected_20_channels_14_days_mib']} MiB | | |", ""]
    return out
