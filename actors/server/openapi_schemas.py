"""The JSON Schemas of the OpenAPI document (``openapi.py``): request and answer bodies.

Answers are described by what every one of them carries (``required``) and the type of each
field; objects stay open to added fields, so a field added later breaks no client. Nullable
values are JSON Schema 2020-12 type lists, as OpenAPI 3.1 has them.
"""

from __future__ import annotations

from typing import Any


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    """An object with these fields, the ``required`` ones always present."""
    return {"type": "object", "required": sorted(required),
            "properties": {**required, **(optional or {})}}


def array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def nullable(kind: str) -> dict[str, Any]:
    return {"type": [kind, "null"]}


STR, INT, NUM, BOOL = ({"type": "string"}, {"type": "integer"}, {"type": "number"},
                       {"type": "boolean"})
ANY_OBJECT = {"type": "object"}
NAMES = array(STR)
MATRIX = nullable("array")  # a confusion matrix: rows of counts, or null before there is one
FEATURES = {"description": "numbers nested to the app's shape, or base64 float32 for audio"}

SCHEMAS: dict[str, Any] = {
    "Error": obj({"error": STR}, {"details": NAMES}),
    "Probe": obj({"status": STR}),
    # -- apps -------------------------------------------------------------------------------------
    "AppSpec": {"type": "object", "description": "an app's spec (DESIGN.md, apps)",
                "properties": {
                    "data_type": {"enum": ["vector", "image", "audio", "sensor"]},
                    "shape": array(INT), "classes": NAMES, "sample_rate": NUM,
                    "announce_as": {"enum": ["sensor", "event"]}, "policy": ANY_OBJECT,
                    "channels": array(ANY_OBJECT), "window_s": NUM, "hop_s": NUM,
                    "sample_hz": NUM}},
    "App": obj({"data_type": STR, "n_samples": INT, "n_feedback": INT,
                "model_version": nullable("integer"), "ready": BOOL, "labels": NAMES,
                "class_counts": ANY_OBJECT, "feedback_accuracy": nullable("number")},
               {"activity": nullable("object"), "channels": array(ANY_OBJECT)}),
    "Samples": obj({"samples": array(obj({"features": FEATURES, "label": {}}))},
                   {"batch_id": STR}),
    "Ingested": obj({"accepted": INT, "n_samples": INT, "duplicate": BOOL}),
    "Imported": obj({"accepted": INT, "n_samples": INT}, {"duplicate": BOOL}),
    "Predict": obj({"instances": array(FEATURES)}, {"probabilities": BOOL}),
    "Prediction": obj({"id": STR, "label": STR, "confidence": NUM, "margin": NUM,
                       "stage": INT, "model_version": INT},
                      {"probabilities": {"type": "object",
                                         "additionalProperties": NUM}}),
    "Predictions": obj({"predictions": array(ref("Prediction"))}),
    "Feedback": obj({"prediction_id": STR, "label": {}}),
    "FeedbackTaken": obj({"prediction_id": STR, "label": STR, "predicted": STR,
                          "duplicate": BOOL}),
    "Status": obj({"uptime_s": NUM, "version": STR, "config_version": INT,
                   "restart_required": BOOL, "apps": ANY_OBJECT,
                   "machines": array(ANY_OBJECT)}),
    "Reloaded": obj({"config_version": INT, "changed": NAMES, "restart_required": NAMES}),
    # -- versions ---------------------------------------------------------------------------------
    "Version": obj({"version": INT, "members": array(ANY_OBJECT), "pinned": BOOL,
                    "ends_run": BOOL},
                   {"reason": nullable("string"), "candidates": array(ANY_OBJECT),
                    "metrics": ANY_OBJECT}),
    "Models": obj({"current": nullable("integer"), "versions": array(ref("Version"))}),
    "Activated": obj({"current": INT}),
    "History": array(obj({"version": INT, "created": NUM, "reason": STR,
                          "members": NAMES, "metrics": ANY_OBJECT,
                          "feedback_accuracy": nullable("number"), "feedback_n": INT})),
    "Quality": obj({"classes": NAMES,
                    "validation": obj({"confusion": MATRIX, "recall": MATRIX}),
                    "feedback": obj({"confusion": MATRIX, "recall": MATRIX, "n": INT})}),
    "Queries": obj({"queries": array(obj({
        "id": STR, "prediction_id": STR, "created": NUM, "margin": NUM, "score": NUM,
        "candidates": array(obj({"label": STR, "share": NUM}))}))}),
    # -- stream apps ------------------------------------------------------------------------------
    "Readings": obj({"readings": array(obj({"t": NUM, "channel": STR, "value": NUM}))},
                    {"batch_id": STR}),
    "ReadingsTaken": obj({"accepted": INT}),
    "Series": obj({"start": NUM, "end": NUM, "channels": array(obj({
        "name": STR, "n": INT, "t": array(NUM), "value": array(NUM)}))}),
    "Label": obj({"label": STR, "start": NUM}, {"end": NUM, "label_id": STR}),
    "Labelled": obj({"label_id": nullable("string"), "windows": INT}),
    "LabelEnd": {"type": "object", "properties": {"end": NUM}},
    "Ranges": obj({"labels": array(obj({"label_id": STR, "label": STR, "start": NUM,
                                        "end": nullable("number"), "windows": INT}))}),
    # -- Open Inference Protocol v2 -----------------------------------------------------------
    "ServerMetadata": obj({"name": STR, "version": STR, "extensions": NAMES}),
    "Live": obj({"live": BOOL}),
    "Ready": obj({"ready": BOOL}),
    "ModelReady": obj({"name": STR, "ready": BOOL}, {"error": STR}),
    "Tensor": obj({"name": STR, "datatype": STR, "shape": array(INT)},
                  {"parameters": ANY_OBJECT, "data": {"type": "array"}}),
    "ModelMetadata": obj({"name": STR, "platform": STR, "versions": NAMES,
                          "inputs": array(ref("Tensor")), "outputs": array(ref("Tensor")),
                          "classes": NAMES}),
    "InferRequest": obj({"inputs": array(ref("Tensor"))},
                        {"id": STR, "parameters": ANY_OBJECT,
                         "outputs": array(obj({"name": STR}, {"parameters": ANY_OBJECT}))}),
    "InferResponse": obj({"model_name": STR, "model_version": STR,
                          "outputs": array(ref("Tensor"))}, {"id": STR}),
    # -- peers ----------------------------------------------------------------------------------
    "PeerProfile": obj({"name": STR, "speed": NUM, "busy": NUM, "cores": INT,
                        "hosted": {}}),
    "PeerInstalled": obj({"loaded": INT}),
    "PeerPredict": obj({"instances": array(FEATURES)},
                       {"members": INT, "probabilities": BOOL}),
    "PeerPredictions": obj({"predictions": array(obj({
        "label": STR, "confidence": NUM, "stage": INT, "model_version": INT}))}),
}
