"""`/metrics` read with prometheus-client's own parser: names and types follow Prometheus'
conventions, the model metrics are there, and a deleted app's series go with it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from support import DaemonProcess

MODEL_METRICS = {  # family name (as the parser gives it) -> type
    "mliot_build_info": "gauge", "mliot_model_version": "gauge",
    "mliot_model_validation_accuracy_ratio": "gauge", "mliot_feedback_accuracy_ratio": "gauge",
    "mliot_feedback": "counter", "mliot_drift_detections": "counter",
    "mliot_training_runs": "counter", "mliot_training_duration_seconds": "histogram",
    "mliot_predictions": "counter", "process_cpu_seconds": "counter",
    "process_resident_memory_bytes": "gauge", "python_info": "gauge"}


def families(d: DaemonProcess) -> dict[str, Any]:
    status, text = d.request("GET", "/metrics")
    assert status == 200
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_follow_the_conventions_and_go_with_their_app(daemon: DaemonProcess) -> None:
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (30, 2)), rng.normal(8, 1, (30, 2))])
    daemon.request("PUT", "/v1/apps/m", {"data_type": "vector"})
    daemon.teach("m", X, ["a"] * 30 + ["b"] * 30)
    status, body = daemon.request("POST", "/v1/apps/m/predict", {"instances": [[8.0, 8.0]]})
    assert status == 200
    assert daemon.request("POST", "/v1/apps/m/feedback", {
        "prediction_id": body["predictions"][0]["id"], "label": "b"})[0] == 200
    found = families(daemon)
    for name, kind in MODEL_METRICS.items():
        assert name in found and found[name].type == kind, (name, found.get(name))
    for name, f in found.items():
        if not name.startswith("mliot_") or name.endswith("_created"):
            continue  # (the parser may give a histogram's _created series a family)
        samples = [s for s in f.samples if not s.name.endswith(("_created", "_bucket"))]
        assert not name.endswith(("_percent", "_ms", "_mib")), f"{name}: not a base unit"
        if f.type == "counter":
            assert all(s.name == f"{name}_total" for s in samples), name
        else:
            assert not name.endswith("_total"), f"{name} is a {f.type} named like a counter"
        if name.endswith("_ratio"):
            assert all(0.0 <= s.value <= 1.0 for s in samples), (name, samples)
        if "seconds" in name:
            assert name.endswith("_seconds") and f.type in ("histogram", "gauge"), name
    predicted = [(s.labels, s.value) for s in found["mliot_predictions"].samples
                 if s.name == "mliot_predictions_total" and s.labels["app"] == "m"]
    assert predicted == [({"app": "m", "stage": str(body["predictions"][0]["stage"]),
                           "channel": "http"}, 1.0)]
    confirmed = [s.value for s in found["mliot_feedback"].samples
                 if s.name == "mliot_feedback_total" and s.labels == {"app": "m",
                                                                      "outcome": "confirmed"}]
    assert confirmed == [1.0]
    assert [s.value for s in found["mliot_feedback_accuracy_ratio"].samples] == [1.0]
    # The Grafana dashboard of config/examples asks only for what is exported.
    dashboard = (Path(__file__).resolve().parents[2] / "config" / "examples" /
                 "grafana-dashboard.json").read_text()
    for name in set(re.findall(r"\b(?:mliot|process)_[a-z_]+", dashboard)):
        assert re.sub(r"_(total|bucket)$", "", name) in found, name
    # Cardinality is bounded by the apps: a deleted app's series are gone.
    assert daemon.request("DELETE", "/v1/apps/m")[0] == 204
    left = [(f.name, s.labels) for f in families(daemon).values() for s in f.samples
            if s.labels.get("app") == "m"]
    assert left == []
