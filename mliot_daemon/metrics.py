"""Prometheus metrics of one daemon, in a registry of its own (tests run several daemons)."""

from __future__ import annotations

import contextlib
import platform
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from mliot_daemon import __version__

TRAINING_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Every metric mliot exports; actors update them, `/metrics` renders them. Names follow
    Prometheus' conventions: counters end in ``_total`` (the client adds it), durations are
    ``_seconds``, shares from 0 to 1 ``_ratio``; per-app labels are removed with the app
    (``forget``), so cardinality is bounded by the apps."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes
        PlatformCollector(registry=r)  # python_info
        Info("mliot_build", "This daemon's version", registry=r).info(
            {"version": __version__, "python": platform.python_version()})
        self.http_requests = Counter("mliot_http_requests", "HTTP requests answered",
                                     ["method", "route", "status"], registry=r)
        self.http_seconds = Histogram("mliot_http_request_seconds", "HTTP request latency",
                                      ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.samples_ingested = Counter("mliot_samples_ingested", "Labelled samples committed",
                                        ["app", "source"], registry=r)
        self.predictions = Counter("mliot_predictions", "Predictions answered, by the stage "
                                   "that answered and the channel they came by", ["app", "stage",
                                                                              "channel"],
                                   registry=r)
        self.remote_failures = Counter("mliot_remote_predict_failures", "Forwarded prediction "
                                       "batches a peer failed (answered locally)", ["peer"],
                                       registry=r)
        self.machine_busy = Gauge("mliot_machine_busy_ratio", "Share of serving capacity in "
                                  "use, per machine (the scheduler's view)", ["machine"],
                                  registry=r)
        self.machine_up = Gauge("mliot_machine_up", "1 when the machine answers", ["machine"],
                                registry=r)
        self.mailbox_depth = Gauge("mliot_mailbox_depth", "Messages waiting per actor",
                                   ["actor"], registry=r)
        self.mailbox_dropped = Counter("mliot_mailbox_dropped", "Telemetry messages dropped "
                                       "because an actor's mailbox was full", ["actor"],
                                       registry=r)
        self.loop_lag = Histogram("mliot_loop_lag_seconds", "Event-loop lag (ticker overshoot)",
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.machine_cpu = Gauge("mliot_machine_cpu_ratio", "CPU use of the machine (0-1)",
                                 registry=r)
        self.machine_memory = Gauge("mliot_machine_memory_ratio", "Memory use of the machine "
                                    "(0-1)", registry=r)
        # models
        self.model_version = Gauge("mliot_model_version", "The version an app serves",
                                   ["app"], registry=r)
        self.model_accuracy = Gauge("mliot_model_validation_accuracy_ratio", "The served "
                                    "version's accuracy on its validation rows", ["app"],
                                    registry=r)
        self.feedback_accuracy = Gauge("mliot_feedback_accuracy_ratio", "Share of the last 100 "
                                       "feedback records that confirmed the prediction",
                                       ["app"], registry=r)
        self.feedback = Counter("mliot_feedback", "Feedback records committed (confirmed: the "
                                "prediction was right; corrected)", ["app", "outcome"],
                                registry=r)
        self.drift_detections = Counter("mliot_drift_detections", "Drift detected in an app's "
                                        "corrections", ["app"], registry=r)
        self.training_runs = Counter("mliot_training_runs", "Training runs ended, by reason "
                                     "(initial, data, feedback) and result (ok, failed)",
                                     ["app", "reason", "result"], registry=r)
        self.training_seconds = Histogram("mliot_training_duration_seconds", "Wall time of "
                                          "a training run", ["app"], buckets=TRAINING_BUCKETS,
                                          registry=r)
        self.ws_connections = Gauge("mliot_ws_connections", "Open WebSocket streams",
                                    registry=r)
        self.ws_watch_skipped = Counter("mliot_ws_watch_skipped", "Predictions not sent to a "
                                        "watcher over its max_per_s cap", registry=r)
        self.ws_dropped = Counter("mliot_ws_clients_dropped", "WebSocket clients cut off "
                                  "because they did not read their messages", registry=r)
        self.http_connections = Gauge("mliot_http_connections", "Open HTTP connections "
                                      "(WebSocket streams included)", registry=r)
        self.connections_refused = Counter("mliot_connections_refused", "Connections refused "
                                           "with a 503 at daemon.max_connections", registry=r)
        self.http_timeouts = Counter("mliot_http_timeouts", "Requests whose head (connection "
                                     "closed), body (408) or WebSocket frame (closed, 1008) did "
                                     "not arrive in time", ["phase"],
                                     registry=r)
        self.config_version = Gauge("mliot_config_version", "Configuration version in force",
                                    registry=r)
        self.config_rejected = Counter("mliot_config_reload_rejected", "Rejected reloads",
                                       registry=r)
        # stream apps
        self.readings = Counter("mliot_readings", "Stream readings committed, by how they "
                                "arrived (in_order, late: behind a window already closed)",
                                ["app", "arrival"], registry=r)
        self.readings_rejected = Counter("mliot_readings_rejected", "Stream readings refused "
                                         "(unknown_channel, not_numeric, missing_field, "
                                         "future, too_old)", ["app", "reason"], registry=r)
        self.windows = Counter("mliot_windows", "Stream windows closed (predicted, invalid, "
                               "skipped: behind a jump in time, late: predicted again after a "
                               "late reading)", ["app", "outcome"], registry=r)
        # MQTT bridge
        self.mqtt_connected = Gauge("mliot_mqtt_connected", "1 while the bridge is connected "
                                    "to the broker", registry=r)
        self.mqtt_connects = Counter("mliot_mqtt_connects", "Successful broker connections",
                                     registry=r)
        self.mqtt_connection_errors = Counter("mliot_mqtt_connection_errors", "Failed connection "
                                              "attempts and lost connections", registry=r)
        self.mqtt_received = Counter("mliot_mqtt_messages_received", "MQTT messages received",
                                     ["kind"], registry=r)
        self.mqtt_published = Counter("mliot_mqtt_messages_published", "MQTT messages "
                                      "published", ["kind"], registry=r)
        self.mqtt_bad_payloads = Counter("mliot_mqtt_bad_payloads", "MQTT messages rejected "
                                         "(not_json, wrong_shape, too_large, invalid, "
                                         "unknown_app, server_error)", ["reason"], registry=r)
        self.mqtt_predictions_shed = Counter("mliot_mqtt_predictions_shed", "Unlabelled "
                                             "prediction requests shed under load", registry=r)
        self.mqtt_incoming_dropped = Counter("mliot_mqtt_incoming_dropped", "Messages the "
                                             "client's inbox had no room for (QoS > 0 ones are "
                                             "redelivered after a reconnect)", registry=r)
        self.mqtt_delivery_retries = Counter("mliot_mqtt_delivery_retries", "Samples or "
                                             "corrections retried after a transient failure",
                                             registry=r)
        self.mqtt_ack_seconds = Histogram("mliot_mqtt_ack_seconds", "Receipt to PUBACK of a "
                                          "sample or correction (commit included)",
                                          buckets=LATENCY_BUCKETS, registry=r)

        # Labelled children looked up once: ``labels()`` takes a lock and builds a key on every
        # call, a few microseconds each on the prediction path.
        self._http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._prediction_children: dict[tuple[str, int, str], Any] = {}

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered HTTP request and its latency."""
        key = (method, route, status)
        children = self._http_children.get(key)
        if children is None:
            children = self._http_children[key] = (
                self.http_requests.labels(method, route, str(status)),
                self.http_seconds.labels(route))
        children[0].inc()
        children[1].observe(seconds)

    def predicted(self, app: str, stage: int, channel: str, n: int) -> None:
        """Count ``n`` predictions answered for ``app`` by ``stage``, come by ``channel``."""
        key = (app, stage, channel)
        child = self._prediction_children.get(key)
        if child is None:
            child = self._prediction_children[key] = self.predictions.labels(
                app, str(stage), channel)
        child.inc(n)

    def forget(self, app: str) -> None:
        """Remove a deleted app's series."""
        for metric in (self.model_version, self.model_accuracy, self.feedback_accuracy,
                       self.drift_detections, self.training_seconds):
            with contextlib.suppress(KeyError):
                metric.remove(app)
        for metric in (self.predictions, self.feedback, self.training_runs, self.readings,
                       self.readings_rejected, self.windows, self.samples_ingested):
            for labels in [k for k in _children(metric) if k[0] == app]:
                metric.remove(*labels)
        self._prediction_children = {k: v for k, v in self._prediction_children.items()
                                     if k[0] != app}

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _children(metric: Any) -> list[tuple[str, ...]]:
    """The label values of a metric's series (prometheus-client keeps them privately)."""
    with metric._lock:
        return list(metric._metrics)
