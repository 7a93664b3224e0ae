"""The MQTT bridge against a real broker: Debian's mosquitto on a free loopback port, and a real
`mliot run` subprocess. No fakes. When CI is set, a missing mosquitto fails instead of skipping."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import numpy as np
import pytest
from mqtt_support import (
    CENTERS,
    Broker,
    Mqtt,
    blobs,
    metric,
    mosquitto_pub,
    mqtt_daemon,
    on,
)
from support import DaemonProcess, borderline, teach_doubtful_room, wait_for

pytestmark = pytest.mark.timeout(180)
STATUS_POLL_S = 1.0  # how often the bridge looks at the apps (discovery.STATUS_EVERY_S)


def stored_label(d: DaemonProcess, app: str, prediction_id: str, probe: str = "a"
                 ) -> str | None:
    """The label stored as feedback on a prediction: a repeated feedback (``probe``, one of
    the app's labels) answers the first."""
    status, body = d.request("POST", f"/v1/apps/{app}/feedback",
                             {"prediction_id": prediction_id, "label": probe})
    assert status == 200, body
    return body["label"] if body["duplicate"] else None


def retained(port: int, topic: str, timeout: float = 10.0, strict: bool = False) -> Any:
    """What the broker retains on a topic, as a new subscriber gets it (decoded JSON). Unless
    strict, a message published just after subscribing counts too."""
    fresh = Mqtt(port, topic)
    try:
        m = fresh.wait(lambda m: m.topic == topic and (m.retain or not strict), timeout)
        try:
            return json.loads(m.payload)
        except ValueError:
            return m.payload.decode()
    finally:
        fresh.close()


def knows_all_blobs(d: DaemonProcess) -> bool:
    """The served model tells the three blobs apart (the first lazy version may know two)."""
    return knows_all_blobs_of(d, "blobs")


def knows_all_blobs_of(d: DaemonProcess, app: str) -> bool:
    status, body = d.request("POST", f"/v1/apps/{app}/predict",
                             {"instances": [list(c) for c in CENTERS.values()]})
    return status == 200 and [p["label"] for p in body["predictions"]] == list(CENTERS)


def app_info(d: DaemonProcess, app: str) -> dict[str, Any]:
    status, body = d.request("GET", f"/v1/apps/{app}")
    assert status == 200, body
    return body


# -- the tests ----------------------------------------------------------------------------------


def test_samples_predictions_feedback_and_home_assistant(daemon_factory: Any,
                                                         broker: Broker) -> None:
    p = f"t{uuid.uuid4().hex[:8]}"
    d = mqtt_daemon(daemon_factory, broker, p,
                    daemon_extra='public_url = "http://mliot.example:9999/"').start()
    watch = Mqtt(broker.port, f"{p}/#", "homeassistant/#")
    dev = Mqtt(broker.port)
    try:
        assert d.request("PUT", "/v1/apps/blobs", {"data_type": "vector", "shape": [2]})[0] == 201
        watch.wait(on(f"{p}/box/availability"))  # retained online, per daemon
        samples = blobs()
        # Batches, and single objects: both are training data when labelled.
        for k in range(0, 280, 70):
            dev.publish(f"{p}/blobs/samples", {"samples": samples[k:k + 70]})
        for s in samples[280:]:
            dev.publish(f"{p}/blobs/samples", s)
        wait_for(lambda: app_info(d, "blobs")["n_samples"] == len(samples), 30)
        assert metric(d, "mliot_samples_ingested_total", '{app="blobs",source="mqtt"}') == 300
        # Retained status and discovery, with what Home Assistant needs.
        watch.wait(on(f"{p}/blobs/status", ready=True), 90)
        wait_for(lambda: knows_all_blobs(d), 90, 0.5)
        status = retained(broker.port, f"{p}/blobs/status", strict=True)
        assert set(status) == {"model_version", "ready", "accuracy", "n_samples",
                               "feedback_accuracy", "training"}
        assert status["training"] in ("idle", "training")
        assert status["n_samples"] == 300 and status["model_version"] >= 1
        assert retained(broker.port, f"{p}/box/availability") == "online"
        config_topic = "homeassistant/sensor/mliot_box_blobs/config"
        config = retained(broker.port, config_topic, strict=True)
        # Home Assistant's MQTT sensor: state_topic; an enum sensor needs its options
        assert config["unique_id"] == "mliot_box_blobs"
        assert config["availability_topic"] == f"{p}/box/availability"
        assert config["state_topic"] == f"{p}/blobs/state"
        assert config["json_attributes_topic"] == f"{p}/blobs/state"
        assert "value_json.label" in config["value_template"]
        assert config["device_class"] == "enum" and config["options"] == ["a", "b", "c"]
        assert config["device"]["identifiers"] and config["device"]["name"]
        assert config["device"]["configuration_url"] == "http://mliot.example:9999/"
        # the select (required: command_topic, options) and the button (command_topic)
        select = retained(broker.port, "homeassistant/select/mliot_box_blobs_correct/config",
                          strict=True)
        assert select["command_topic"] == f"{p}/blobs/correct"
        assert select["options"] == ["a", "b", "c"]
        assert select["unique_id"] == "mliot_box_blobs_correct"
        assert select["device"]["identifiers"] == config["device"]["identifiers"]
        button = retained(broker.port, "homeassistant/button/mliot_box_blobs_confirm/config",
                          strict=True)
        assert button["command_topic"] == f"{p}/blobs/confirm"
        assert button["unique_id"] == "mliot_box_blobs_confirm"
        assert button["availability_topic"] == f"{p}/box/availability"
        # diagnostics, read from the status topic
        for key, field in (("version", "model_version"), ("samples", "n_samples"),
                           ("feedback_accuracy", "feedback_accuracy"),
                           ("training", "training")):
            diag = retained(broker.port, f"homeassistant/sensor/mliot_box_blobs_{key}/config",
                            strict=True)
            assert diag["entity_category"] == "diagnostic"
            assert diag["state_topic"] == f"{p}/blobs/status"
            assert diag["value_template"] == f"{{{{ value_json.{field} }}}}"
            assert diag["unique_id"] == f"mliot_box_blobs_{key}"

        # Unlabelled: a prediction carrying the request's ref; the batch form too.
        dev.publish(f"{p}/blobs/samples", {"features": [10.2, 0.3], "ref": "one"})
        one = json.loads(watch.wait(on(f"{p}/blobs/predictions", ref="one")).payload)
        assert one["label"] == "b" and 0 < one["confidence"] <= 1 and one["id"]
        dev.publish(f"{p}/blobs/samples", {"samples": [{"features": [0.1, 9.8], "ref": "x"},
                                                       {"features": [0.2, 0.1], "ref": "y"}]})
        assert json.loads(watch.wait(on(f"{p}/blobs/predictions", ref="x")).payload)[
            "label"] == "c"
        assert json.loads(watch.wait(on(f"{p}/blobs/predictions", ref="y")).payload)[
            "label"] == "a"
        # The state is the last label from any channel: an HTTP prediction moves it.
        status_code, body = d.request("POST", "/v1/apps/blobs/predict",
                                      {"instances": [[10.0, 0.0]]})
        assert status_code == 200 and body["predictions"][0]["label"] == "b"
        watch.wait(on(f"{p}/blobs/state", label="b", prediction_id=body["predictions"][0]["id"]))
        state = retained(broker.port, f"{p}/blobs/state", strict=True)
        assert set(state) == {"label", "prediction_id", "confidence", "margin", "at"}
        assert state["prediction_id"] == body["predictions"][0]["id"]
        assert abs(state["at"] - time.time()) < 60

        # Feedback over MQTT is committed like HTTP feedback: counted, and a new sample.
        before = app_info(d, "blobs")
        dev.publish(f"{p}/blobs/feedback", {"prediction_id": one["id"], "label": "c"})
        # (the sample count is swapped in just after the commit the feedback count reads)
        wait_for(lambda: (a := app_info(d, "blobs"))["n_feedback"] == 1
                 and a["n_samples"] == before["n_samples"] + 1, 30)
        # An unknown prediction id is refused, reported, and does not stop the bridge.
        dev.publish(f"{p}/blobs/feedback", {"prediction_id": "nope", "label": "a"})
        watch.wait(on(f"{p}/blobs/errors", kind="not_found"))
        assert app_info(d, "blobs")["n_feedback"] == 1

        # Home Assistant's select publishes a bare label: it corrects the open query (see
        # test_the_open_label_query_is_retained), and with none open the latest prediction.
        # (A doubtful answer of an early two-class version may have opened one: skip it.)
        for q in d.request("GET", "/v1/apps/blobs/queries")[1]["queries"]:
            assert d.request("DELETE", f"/v1/apps/blobs/queries/{q['id']}")[0] == 204
        latest = d.request("POST", "/v1/apps/blobs/predict", {"instances": [[9.8, 0.2]]})[1][
            "predictions"][0]
        mosquitto_pub(broker.port, f"{p}/blobs/correct", "c")
        wait_for(lambda: app_info(d, "blobs")["n_feedback"] == 2, 30)
        assert stored_label(d, "blobs", latest["id"]) == "c"
        # The button confirms the latest prediction: feedback with the predicted label.
        latest = d.request("POST", "/v1/apps/blobs/predict", {"instances": [[0.1, 9.9]]})[1][
            "predictions"][0]
        mosquitto_pub(broker.port, f"{p}/blobs/confirm", "PRESS")
        wait_for(lambda: app_info(d, "blobs")["n_feedback"] == 3, 30)
        assert stored_label(d, "blobs", latest["id"]) == latest["label"] == "c"
        # A sender that knows the prediction names it.
        named = d.request("POST", "/v1/apps/blobs/predict", {"instances": [[0.0, 0.3]]})[1][
            "predictions"][0]
        d.request("POST", "/v1/apps/blobs/predict", {"instances": [[10.0, 0.3]]})
        mosquitto_pub(broker.port, f"{p}/blobs/correct",
                      json.dumps({"label": "b", "prediction_id": named["id"]}))
        wait_for(lambda: app_info(d, "blobs")["n_feedback"] == 4, 30)
        assert stored_label(d, "blobs", named["id"]) == "b"
        # Bad input is counted, reported and logged; nothing is stored; the bridge carries on.
        bad_before = metric(d, "mliot_mqtt_bad_payloads_total", '{reason="invalid"}')
        mosquitto_pub(broker.port, f"{p}/blobs/correct", "zebra")  # not a class
        watch.wait(on(f"{p}/blobs/errors", kind="invalid"))
        mosquitto_pub(broker.port, f"{p}/blobs/correct", '{"label": 5}')  # malformed
        mosquitto_pub(broker.port, f"{p}/blobs/correct", '{"label": "a", "prediction_id": 1')
        wait_for(lambda: metric(d, "mliot_mqtt_bad_payloads_total", '{reason="invalid"}')
                 >= bad_before + 1, 30)
        wait_for(lambda: metric(d, "mliot_mqtt_bad_payloads_total", '{reason="wrong_shape"}')
                 >= 1 and metric(d, "mliot_mqtt_bad_payloads_total", '{reason="not_json"}')
                 >= 1, 30)
        assert d.request("PUT", "/v1/apps/fresh", {"data_type": "vector"})[0] == 201
        mosquitto_pub(broker.port, f"{p}/fresh/confirm", "PRESS")  # nothing to confirm yet
        watch.wait(on(f"{p}/fresh/errors", kind="not_found"))
        assert app_info(d, "blobs")["n_feedback"] == 4 and app_info(d, "fresh")["n_feedback"] == 0
        assert d.request("DELETE", "/v1/apps/fresh")[0] == 204
        assert "mqtt_message_rejected" in d.log_path.read_text()

        # Home Assistant restarted: every discovery config is sent again.
        seen = sum(m.topic == config_topic for m in watch.messages)
        dev.publish("homeassistant/status", "online")
        wait_for(lambda: sum(m.topic == config_topic for m in watch.messages) > seen, 30)

        # An app is announced once it knows two classes, again when they change, and its
        # entities are removed (empty retained configs) when it is deleted.
        assert d.request("PUT", "/v1/apps/gone", {"data_type": "vector"})[0] == 201
        gone = {c: f"homeassistant/{c}/mliot_box_gone{s}/config"
                for c, s in (("sensor", ""), ("select", "_correct"), ("button", "_confirm"))}
        gone["diagnostic"] = "homeassistant/sensor/mliot_box_gone_samples/config"
        teach = {"samples": [{"features": [0.0, 1.0], "label": "x"}]}
        assert d.request("POST", "/v1/apps/gone/samples", teach)[0] == 200
        time.sleep(STATUS_POLL_S * 2)
        assert not any(m.topic == gone["sensor"] for m in watch.messages)  # one class: not yet
        teach = {"samples": [{"features": [5.0, 1.0], "label": "y"}]}
        assert d.request("POST", "/v1/apps/gone/samples", teach)[0] == 200
        announced = json.loads(watch.wait(on(gone["sensor"])).payload)
        assert announced["options"] == ["x", "y"]
        teach = {"samples": [{"features": [9.0, 1.0], "label": "z"}]}
        assert d.request("POST", "/v1/apps/gone/samples", teach)[0] == 200
        watch.wait(lambda m: m.topic == gone["select"]
                   and json.loads(m.payload)["options"] == ["x", "y", "z"])
        assert d.request("DELETE", "/v1/apps/gone")[0] == 204
        for topic in gone.values():
            watch.wait(lambda m, t=topic: m.topic == t and m.payload == b"")
        late = Mqtt(broker.port, "homeassistant/+/+/config")  # what the broker retains
        try:
            late.wait(on(config_topic))
            time.sleep(0.5)
            assert not any("mliot_box_gone" in m.topic for m in late.messages)
        finally:
            late.close()
    finally:
        watch.close()
        dev.close()
    assert d.stop() == 0


def test_samples_published_while_the_daemon_is_down_are_ingested(daemon_factory: Any,
                                                                 broker: Broker) -> None:
    p = f"t{uuid.uuid4().hex[:8]}"
    d = mqtt_daemon(daemon_factory, broker, p).start()
    assert d.request("PUT", "/v1/apps/blobs", {"data_type": "vector", "shape": [2]})[0] == 201
    dev = Mqtt(broker.port)
    try:
        wait_for(lambda: metric(d, "mliot_mqtt_connected") == 1, 30)
        assert d.stop() == 0  # the broker keeps the session and queues for it
        samples = blobs(20)
        for s in samples:
            dev.publish(f"{p}/blobs/samples", s)
        d.start()
        wait_for(lambda: app_info(d, "blobs")["n_samples"] == len(samples), 30)
        assert metric(d, "mliot_samples_ingested_total",
                      '{app="blobs",source="mqtt"}') == len(samples)
    finally:
        dev.close()
    assert d.stop() == 0


def test_broker_restart_and_malformed_payloads(daemon_factory: Any, broker: Broker) -> None:
    p = f"t{uuid.uuid4().hex[:8]}"
    d = mqtt_daemon(daemon_factory, broker, p, extra="max_payload_kb = 4\n").start()
    assert d.request("PUT", "/v1/apps/blobs", {"data_type": "vector", "shape": [2]})[0] == 201
    assert d.request("POST", "/v1/apps/blobs/samples", {"samples": blobs()})[0] == 200
    wait_for(lambda: knows_all_blobs(d), 90, 0.5)
    watch = Mqtt(broker.port, f"{p}/+/predictions", f"{p}/+/errors")
    dev = Mqtt(broker.port)
    try:
        # Malformed: not JSON, the wrong shape, too big. Counted; the bridge carries on.
        dev.publish(f"{p}/blobs/samples", b"\xff not json")
        dev.publish(f"{p}/blobs/samples", {"samples": "nope"})
        dev.publish(f"{p}/blobs/samples", [1, 2, 3])
        dev.publish(f"{p}/blobs/feedback", {"label": "a"})
        dev.publish(f"{p}/blobs/samples", {"features": [0.0] * 2000, "label": "a"})
        dev.publish(f"{p}/blobs/samples", {"features": [1.0, 2.0, 3.0], "label": "a"})
        dev.publish(f"{p}/blobs/samples", {"features": [0.0, 10.0], "ref": "after"})
        assert json.loads(watch.wait(on(f"{p}/blobs/predictions", ref="after")).payload)[
            "label"] == "c"
        bad = "mliot_mqtt_bad_payloads_total"
        assert metric(d, bad, '{reason="not_json"}') == 1
        assert metric(d, bad, '{reason="wrong_shape"}') == 3
        assert metric(d, bad, '{reason="too_large"}') == 1
        assert metric(d, bad, '{reason="invalid"}') == 1  # a 3-d vector for a 2-d app
        assert app_info(d, "blobs")["n_samples"] == 300  # nothing bad was stored

        # The broker dies: HTTP keeps serving; the bridge reconnects when it is back.
        connects = metric(d, "mliot_mqtt_connects_total")
        broker.kill()
        wait_for(lambda: metric(d, "mliot_mqtt_connected") == 0, 60)
        status, body = d.request("POST", "/v1/apps/blobs/predict", {"instances": [[0, 0]]},
                                 timeout=5)
        assert status == 200 and body["predictions"][0]["label"] == "a"
        assert d.request("POST", "/v1/apps/blobs/samples", {"samples": blobs(2, seed=1)},
                         timeout=5)[0] == 200
        watch.close()
        dev.close()
        time.sleep(1.0)  # a few reconnect attempts fail meanwhile
        broker.start()
        wait_for(lambda: metric(d, "mliot_mqtt_connects_total") > connects, 60)
        watch = Mqtt(broker.port, f"{p}/+/predictions")
        dev = Mqtt(broker.port)
        dev.publish(f"{p}/blobs/samples", {"features": [10.0, 0.0], "ref": "back"})
        assert json.loads(watch.wait(on(f"{p}/blobs/predictions", ref="back")).payload)[
            "label"] == "b"
        dev.publish(f"{p}/blobs/samples", {"features": [10.0, 0.5], "label": "b"})
        wait_for(lambda: app_info(d, "blobs")["n_samples"] == 307, 30)
        assert metric(d, "mliot_mqtt_connection_errors_total") >= 1
    finally:
        watch.close()
        dev.close()
    assert d.stop() == 0


def test_mqtt_section_applies_live(daemon_factory: Any, broker: Broker) -> None:
    d = daemon_factory("live")
    d.write_config(daemon_extra='name = "live"')
    d.start()
    assert d.request("PUT", "/v1/apps/blobs", {"data_type": "vector", "shape": [2]})[0] == 201
    assert metric(d, "mliot_mqtt_connected") == 0  # no [mqtt]: the bridge idles
    dev = Mqtt(broker.port)
    try:
        for prefix, n in (("one", 1), ("two", 2)):
            d.write_config(extra=f'[mqtt]\nurl = "{broker.url}"\nprefix = "{prefix}"\n',
                           daemon_extra='name = "live"')
            wait_for(lambda p=prefix: retained(broker.port, f"{p}/live/availability")
                     == "online", 30)
            dev.publish(f"{prefix}/blobs/samples", blobs(1)[n - 1])  # labels a, then b
            wait_for(lambda n=n: app_info(d, "blobs")["n_samples"] == n, 30)
        assert retained(broker.port, "one/live/availability") == "offline"
        dev.publish("one/blobs/samples", blobs(1)[0])  # the old prefix is unsubscribed
        time.sleep(1.0)
        assert app_info(d, "blobs")["n_samples"] == 2
        # A new daemon name is a new client id and Home Assistant device: the old entity's
        # retained discovery config is removed, the new one announced.
        old_config = "homeassistant/sensor/mliot_live_blobs/config"
        assert retained(broker.port, old_config)["unique_id"] == "mliot_live_blobs"
        d.write_config(extra=f'[mqtt]\nurl = "{broker.url}"\nprefix = "two"\n',
                       daemon_extra='name = "moved"')
        config = retained(broker.port, "homeassistant/sensor/mliot_moved_blobs/config", 30)
        assert config["device"]["name"] == "mliot moved"
        with pytest.raises(AssertionError, match="no matching MQTT message"):
            retained(broker.port, old_config, timeout=2.0, strict=True)
        dev.publish("two/blobs/samples", blobs(1)[0])  # served under the new name too
        wait_for(lambda: app_info(d, "blobs")["n_samples"] == 3, 30)
    finally:
        dev.close()
    assert d.stop() == 0


def test_mqtt_enabled_by_reload_publishes_predictions_state(daemon_factory: Any,
                                                            broker: Broker) -> None:
    """A daemon started without [mqtt], trained, then given [mqtt] by a live reload: its
    predictions reach the retained state topic (the server, not only the bridge, applies the
    section)."""
    d = daemon_factory("late")
    d.write_config(extra="[training]\nworkers = 1\n", daemon_extra='name = "late"')
    d.start()
    assert d.request("PUT", "/v1/apps/blobs", {"data_type": "vector", "shape": [2]})[0] == 201
    assert d.request("POST", "/v1/apps/blobs/samples", {"samples": blobs(30)})[0] == 200
    wait_for(lambda: knows_all_blobs(d), 90, 0.5)
    d.write_config(extra=f'[training]\nworkers = 1\n[mqtt]\nurl = "{broker.url}"\n'
                         'prefix = "late"\n', daemon_extra='name = "late"')
    wait_for(lambda: retained(broker.port, "late/late/availability") == "online", 30)
    watch = Mqtt(broker.port, "late/blobs/state")
    try:
        status, body = d.request("POST", "/v1/apps/blobs/predict", {"instances": [[0.0, 10.0]]})
        assert status == 200 and body["predictions"][0]["label"] == "c"
        state = json.loads(watch.wait(on("late/blobs/state", label="c"), 30).payload)
        assert state["prediction_id"] == body["predictions"][0]["id"]
    finally:
        watch.close()
    assert d.stop() == 0


def test_the_open_label_query_is_retained(daemon_factory: Any, broker: Broker) -> None:
    """``{prefix}/{app}/query`` holds the open query (the first of ``GET .../queries``), and
    is cleared when none is left."""
    p = f"t{uuid.uuid4().hex[:8]}"
    d = mqtt_daemon(daemon_factory, broker, p).start()
    teach_doubtful_room(d)
    points = borderline(200)
    k = 0

    def first_query() -> dict[str, Any] | None:
        nonlocal k
        queries = d.request("GET", "/v1/apps/room/queries")[1]["queries"]
        if not queries:  # predict more borderline points (one query a second opens)
            d.request("POST", "/v1/apps/room/predict", {"instances": points[k:k + 4]})
            k = (k + 4) % len(points)
        return queries[0] if queries else None

    wait_for(first_query, 60, 0.5)
    watch = Mqtt(broker.port, f"{p}/room/query")
    try:
        # the retained one is the open query, whatever else opens meanwhile
        wait_for(lambda: any(json.loads(m.payload or b"null") == first_query()
                             for m in watch.messages), 30, 0.2)
        # A bare label on `correct` (Home Assistant's select) answers the open query.
        first = d.request("GET", "/v1/apps/room/queries")[1]["queries"][0]
        label = first["candidates"][1]["label"]  # the runner-up: a correction
        mosquitto_pub(broker.port, f"{p}/room/correct", label)
        wait_for(lambda: first["id"] not in {
            q["id"] for q in d.request("GET", "/v1/apps/room/queries")[1]["queries"]}, 30)
        assert stored_label(d, "room", first["prediction_id"], "calm") == label
        for q in d.request("GET", "/v1/apps/room/queries")[1]["queries"]:
            assert d.request("DELETE", f"/v1/apps/room/queries/{q['id']}")[0] == 204
        watch.wait(lambda m: m.topic == f"{p}/room/query" and m.payload == b"", 30)
    finally:
        watch.close()
    assert d.stop() == 0


def test_two_daemons_on_one_broker_keep_their_own_availability(daemon_factory: Any,
                                                               broker: Broker) -> None:
    """Each daemon's availability is its own topic: one stopping does not mark the other
    offline; the shared topic of earlier releases is cleared on connect."""
    p = f"t{uuid.uuid4().hex[:8]}"
    dev = Mqtt(broker.port)
    dev.publish(f"{p}/availability", "online", retain=True)  # left by an earlier release
    dev.close()
    kitchen = mqtt_daemon(daemon_factory, broker, p, name="Kitchen.Box").start()
    hall = mqtt_daemon(daemon_factory, broker, p, name="hall").start()
    wait_for(lambda: retained(broker.port, f"{p}/kitchen_box/availability") == "online", 30)
    wait_for(lambda: retained(broker.port, f"{p}/hall/availability") == "online", 30)
    with pytest.raises(AssertionError, match="no matching MQTT message"):
        retained(broker.port, f"{p}/availability", timeout=2.0, strict=True)
    assert kitchen.stop() == 0
    wait_for(lambda: retained(broker.port, f"{p}/kitchen_box/availability") == "offline", 30)
    assert retained(broker.port, f"{p}/hall/availability", strict=True) == "online"
    hall.proc.kill()  # the broker's last will speaks for a daemon that died
    hall.proc.wait(10)
    wait_for(lambda: retained(broker.port, f"{p}/hall/availability") == "offline", 90)


def test_an_app_announced_as_events(daemon_factory: Any, broker: Broker) -> None:
    """``announce_as = "event"``: Home Assistant gets an ``event`` entity (event types = the
    classes) fired once per prediction, instead of a sensor that keeps an old label; changing
    it back swaps the entities."""
    p = f"t{uuid.uuid4().hex[:8]}"
    d = mqtt_daemon(daemon_factory, broker, p).start()
    watch = Mqtt(broker.port, f"{p}/knock/event", "homeassistant/+/mliot_box_knock/config")
    try:
        spec = {"data_type": "vector", "shape": [2], "announce_as": "event"}
        assert d.request("PUT", "/v1/apps/knock", spec)[0] == 201
        d.teach("knock", np.array([s["features"] for s in blobs(20)]),
                [s["label"] for s in blobs(20)])
        config = json.loads(watch.wait(on("homeassistant/event/mliot_box_knock/config"),
                                       60).payload)
        assert config["event_types"] == ["a", "b", "c"]  # required by Home Assistant
        assert config["state_topic"] == f"{p}/knock/event"
        assert config["unique_id"] == "mliot_box_knock"
        assert not any(m.topic == "homeassistant/sensor/mliot_box_knock/config" and m.payload
                       for m in watch.messages)
        wait_for(lambda: knows_all_blobs_of(d, "knock"), 90, 0.5)
        status, body = d.request("POST", "/v1/apps/knock/predict", {"instances": [[10.0, 0.0]]})
        fired = json.loads(watch.wait(on(f"{p}/knock/event", event_type="b"), 30).payload)
        assert fired["prediction_id"] == body["predictions"][0]["id"]
        assert not any(m.retain for m in watch.messages if m.topic == f"{p}/knock/event")
        # back to a sensor: the event entity is removed, the enum sensor announced
        assert d.request("PUT", "/v1/apps/knock", {**spec, "announce_as": "sensor"})[0] == 200
        watch.wait(lambda m: m.topic == "homeassistant/event/mliot_box_knock/config"
                   and m.payload == b"", 30)
        watch.wait(on("homeassistant/sensor/mliot_box_knock/config"), 30)
    finally:
        watch.close()
    assert d.stop() == 0
