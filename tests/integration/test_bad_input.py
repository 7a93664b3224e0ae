"""Input from a client never gets a 5xx other than the documented 503s, and never stops the
daemon: the cases a fuzzer once found, then a property test over v1 and OIP bodies, path
parameters and headers against a live daemon with a trained app."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import DaemonProcess, wait_for

TOKEN, PEER = "tok", "peer-secret"
DOCUMENTED_503 = ("no model yet", "placement refused", "disk full", "timed out",
                  "store unavailable", "could not be loaded")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon for the module, with a token, a peer secret and a trained app `v`."""
    d = DaemonProcess(tmp_path_factory.mktemp("live"))
    d.write_config(daemon_extra=f'token = "{TOKEN}"\npeer_secret = "{PEER}"')
    d.start()
    assert d.request("PUT", "/v1/apps/v", {"data_type": "vector", "classes": ["a", "b"]},
                     token=TOKEN)[0] == 201
    samples = [{"features": [float(i % 2), float(i % 3), 1.0], "label": "ab"[i % 2]}
               for i in range(20)]
    assert d.request("POST", "/v1/apps/v/samples", {"samples": samples}, token=TOKEN)[0] == 200
    wait_for(lambda: d.request("GET", "/v1/apps/v")[1]["ready"], 120)
    yield d
    d.stop()


def send(d: DaemonProcess, method: str, path: str, body: bytes = b"",
         headers: dict[str, str | bytes] | None = None) -> tuple[int, Any]:
    """One request with whatever path and header bytes the test chose."""
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        sent = {"Content-Length": str(len(body)), "Content-Type": "application/json",
                **(headers or {})}
        for name, value in sent.items():
            raw = value.encode() if isinstance(value, str) else value  # UTF-8 or any bytes,
            conn.putheader(name, raw.translate(None, b"\r\n\0"))  # but one header line
        conn.endheaders(body)
        resp = conn.getresponse()
        payload = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(payload) if payload else None
    except ValueError:
        return resp.status, payload


def oip(tensor: dict[str, Any]) -> bytes:
    return json.dumps({"inputs": [{"name": "x", **tensor}]}).encode()


@pytest.mark.parametrize("method, path, body, headers, status", [
    ("POST", "/v2/models/v/infer",
     oip({"datatype": ["FP32"], "shape": [1, 3], "data": [1, 2, 3]}), {}, 422),
    ("POST", "/v2/models/v/infer",
     oip({"datatype": {"FP": 32}, "shape": [1, 3], "data": [1, 2, 3]}), {}, 422),
    ("POST", "/v2/models/v/infer",
     oip({"datatype": "FP32", "shape": [4294967296, 4294967296],
          "parameters": {"binary_data_size": 0}}), "header", 422),
    ("POST", "/v1/apps/v/models/" + "9" * 300 + "/activate", b"", "token", 404),
    ("PUT", "/v1/apps/w", b'{"data_type": "vector"}',
     {"Authorization": b"Bearer \xff\xfe"}, 401),
    ("POST", "/v1/apps/v/samples",
     b'{"samples": [{"features": [1, true, 0], "label": "a"}]}', "token", 422),
    ("POST", "/v1/apps/v/samples",
     b'{"samples": [{"features": ["1.5", 1, 0], "label": "a"}]}', "token", 422),
    ("POST", "/v1/apps/v/predict", b'{"instances": [[1, 0, false]]}', {}, 422),
    ("POST", "/v2/models/v/infer",
     oip({"datatype": "FP32", "shape": [1, 3], "data": ["1", "2", "3"]}), {}, 422),
])
def test_each_input_that_once_gave_500_now_gets_its_4xx(
        live: DaemonProcess, method: str, path: str, body: bytes, headers: Any,
        status: int) -> None:
    if headers == "header":  # the whole body is the JSON header: no binary data follows
        headers = {"Inference-Header-Content-Length": str(len(body))}
    elif headers == "token":
        headers = {"Authorization": f"Bearer {TOKEN}"}
    before = live.request("GET", "/v1/apps/v")[1]["n_samples"]
    got, answer = send(live, method, path, body, headers)
    assert got == status, answer
    assert isinstance(answer, dict) and answer["error"], answer
    if b"true" in body or b'"1.5"' in body or b"false" in body:
        assert "must be a (nested) list of numbers" in answer["error"] + str(answer["details"])
    assert live.request("GET", "/v1/apps/v")[1]["n_samples"] == before  # nothing stored


# -- the property test ------------------------------------------------------------------------

ROUTES = [
    ("GET", "/v1/apps/{app}"), ("PUT", "/v1/apps/{name}"), ("DELETE", "/v1/apps/{name}"),
    ("POST", "/v1/apps/{app}/samples"), ("POST", "/v1/apps/{app}/predict"),
    ("POST", "/v1/apps/{app}/feedback"), ("GET", "/v1/apps/{app}/models"),
    ("POST", "/v1/apps/{app}/models/{version}/activate"), ("GET", "/v1/status"),
    ("GET", "/v2/models/{app}"), ("GET", "/v2/models/{app}/ready"),
    ("POST", "/v2/models/{app}/infer"), ("GET", "/v1/peer/profile"),
    ("PUT", "/v1/peer/models/{name}/{app}/{version}"),
    ("POST", "/v1/peer/models/{name}/{app}/predict"),
]
SEGMENT = st.one_of(st.just("v"), st.sampled_from(["..", "%2F", "%FF", "a" * 300, "0", "-1"]),
                    st.text(st.characters(codec="utf-8", exclude_characters="/?#"),
                            min_size=1, max_size=12))
NUMBERS = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                    st.booleans(), st.text(max_size=5), st.none())
VALUES = st.recursive(NUMBERS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
FEATURES = st.one_of(st.lists(NUMBERS, max_size=5), VALUES,
                     st.lists(st.lists(st.floats(-1e6, 1e6), min_size=3, max_size=3),
                              max_size=3))
TENSOR = st.fixed_dictionaries({}, optional={
    "datatype": st.one_of(st.sampled_from(["FP32", "INT8", "BYTES", "BOOL"]), VALUES),
    "shape": st.one_of(st.lists(st.integers(-3, 2**40), max_size=4), VALUES),
    "data": FEATURES, "parameters": st.one_of(VALUES, st.fixed_dictionaries(
        {"binary_data_size": st.one_of(st.integers(-5, 2**40), VALUES)}))})
BODIES = st.one_of(
    st.binary(max_size=64),
    VALUES.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"instances": st.one_of(st.lists(FEATURES, max_size=3), VALUES)},
                          optional={"probabilities": VALUES}).map(lambda v: json.dumps(v)
                                                                  .encode()),
    st.fixed_dictionaries({"samples": st.lists(st.fixed_dictionaries(
        {"features": FEATURES, "label": VALUES}), max_size=3)},
        optional={"batch_id": VALUES}).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"prediction_id": VALUES, "label": VALUES}).map(
        lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"data_type": st.one_of(st.sampled_from(["vector", "image"]),
                                                  VALUES)},
                          optional={"shape": VALUES, "classes": VALUES, "policy": VALUES}).map(
        lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"inputs": st.one_of(st.lists(TENSOR, max_size=2), VALUES)},
                          optional={"outputs": VALUES, "parameters": VALUES}).map(
        lambda v: json.dumps(v).encode()),
)
HEADERS = st.fixed_dictionaries({}, optional={
    "Authorization": st.one_of(st.sampled_from([f"Bearer {TOKEN}", f"Bearer {PEER}"]),
                               st.binary(max_size=20).map(lambda b: b"Bearer " + b)),
    "Content-Type": st.sampled_from(["application/json", "text/csv", "application/x-tar"]),
    "Inference-Header-Content-Length": st.one_of(st.integers(-5, 2**66).map(str),
                                                 st.text(max_size=5)),
    "X-Mliot-Signature": st.text(max_size=20), "X-Mliot-Model": st.text(max_size=20),
})


@settings(max_examples=1500, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(route=st.sampled_from(ROUTES), app=SEGMENT, name=SEGMENT,
       version=st.one_of(st.integers(-3, 10**30).map(str), SEGMENT), body=BODIES,
       headers=HEADERS)
def test_no_input_gets_a_500(live: DaemonProcess, route: tuple[str, str], app: str, name: str,
                             version: str, body: bytes, headers: dict[str, Any]) -> None:
    method, template = route
    if name == "v":
        name = "w"  # the app under test stays: PUT and DELETE work on others
    from urllib.parse import quote

    path = template.format(app=quote(app, safe="%"), name=quote(name, safe="%"),
                           version=quote(version, safe="%"))
    status, answer = send(live, method, path, body, headers)
    if status == 503:
        assert any(why in str(answer) for why in DOCUMENTED_503), answer
    else:
        assert status < 500, (method, path, body, headers, answer)


def test_the_daemon_survived_the_fuzzing(live: DaemonProcess) -> None:
    started = time.monotonic()
    assert live.proc is not None and live.proc.poll() is None
    assert live.request("GET", "/healthz")[0] == 200
    assert live.request("GET", "/v1/apps/v")[1]["ready"]
    assert not live.events("http_handler_failed")
    assert time.monotonic() - started < 5


def test_the_device_token_opens_no_peer_endpoint(live: DaemonProcess) -> None:
    """Devices hold the token; the peer API (which receives models) takes only the peer
    secret, in the header."""
    device = {"Authorization": f"Bearer {TOKEN}"}
    for method, path in (("GET", "/v1/peer/profile"), ("PUT", "/v1/peer/models/a/v/1"),
                         ("POST", "/v1/peer/models/a/v/predict")):
        assert send(live, method, path, b"{}", device)[0] in (401, 403), path
        assert send(live, method, f"{path}?token={PEER}", b"{}")[0] in (401, 403), path
    status, profile = send(live, "GET", "/v1/peer/profile", b"",
                           {"Authorization": f"Bearer {PEER}"})
    assert status == 200 and profile["hosted"] == {}
