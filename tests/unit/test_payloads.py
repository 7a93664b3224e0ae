"""Checking sample payloads against an app's data type and shape."""

from __future__ import annotations

import pytest

from actors.server.payloads import check_features, parse_json, parse_samples, samples_in
from mliot_daemon.config import parse_app
from mliot_daemon.errors import Invalid, Malformed

VECTOR = parse_app({"name": "v", "data_type": "vector", "classes": ["a", "b"]})
AUDIO = parse_app({"name": "au", "data_type": "audio", "sample_rate": 16000})
SENSOR = parse_app({"name": "s", "data_type": "sensor"})


def test_first_sample_fixes_the_shape_for_the_batch() -> None:
    batch = parse_samples(samples_in({"samples": [{"features": [1, 2], "label": "a"},
                                       {"features": [3, 4], "label": "b"}]}), VECTOR, None)
    assert batch.shape == (2,) and batch.labels == ["a", "b"]
    with pytest.raises(Invalid) as info:
        parse_samples(samples_in({"samples": [{"features": [1, 2], "label": "a"},
                                   {"features": [3], "label": "b"}]}), VECTOR, None)
    assert isinstance(info.value, Invalid)
    assert info.value.details == ["samples[1].features: shape [1] differs from the app's [2]"]


@pytest.mark.parametrize("features, why", [
    ([1.0, float("nan")], "NaN or infinite"),
    ([[1, 2], [3, 4]], "is not a vector sample"),
    ([], "is not a vector sample"),
    ([1, "x"], "must be a (nested) list of numbers"),
    ([[1, 2], [3]], "must be a (nested) list of numbers"),
])
def test_bad_features_are_named(features: list, why: str) -> None:
    with pytest.raises(Invalid) as info:
        check_features(features, VECTOR, None)
    assert why in info.value.message


def test_labels_numbers_and_unknown_labels() -> None:
    app = parse_app({"name": "n", "data_type": "vector", "classes": [0, 1]})
    batch = parse_samples(samples_in({"samples": [{"features": [1], "label": 1.0}]}), app, None)
    assert batch.labels == ["1"]
    with pytest.raises(Invalid) as info:
        parse_samples(samples_in({"samples": [{"features": [1], "label": "c"}]}), VECTOR, None)
    assert "unknown label 'c'" in info.value.details[0]


def test_audio_takes_raw_clips_of_half_a_second_or_patches() -> None:
    assert check_features([0.0] * 8000, AUDIO, None).shape == (8000,)
    assert check_features([[0.0] * 64] * 96, AUDIO, None).shape == (96, 64)
    with pytest.raises(Invalid, match="at least 0.5 s"):
        check_features([0.0] * 7999, AUDIO, None)


def test_sensor_windows_are_two_dimensional() -> None:
    assert check_features([[1, 2, 3], [4, 5, 6]], SENSOR, None).shape == (2, 3)
    with pytest.raises(Invalid, match="channels, time"):
        check_features([1, 2, 3], SENSOR, None)


def test_malformed_json_is_400_and_wrong_structure_422() -> None:
    with pytest.raises(Malformed):
        parse_json(b"{nope")
    for payload in ({}, {"samples": []}, {"samples": [{"features": [1]}]}, [1, 2],
                    {"samples": [], "extra": 1}, {"samples": [{"features": [1], "label": "a"}],
                                                  "batch_id": 7}):
        with pytest.raises(Invalid):
            parse_samples(samples_in(payload), VECTOR, None)


def test_an_npz_of_padded_clips_is_cut_to_its_lengths() -> None:
    """As `mliot export` writes audio: clips padded to the longest, with their lengths."""
    import io

    import numpy as np

    from actors.server.tables import parse_table, read_table

    X = np.zeros((2, 6000), dtype=np.float32)
    X[0, :4000], X[1] = 0.5, 0.25
    body = io.BytesIO()
    np.savez(body, X=X, y=np.array(["a", "b"]), lengths=np.array([4000, 6000]))
    rows, labels = read_table(body.getvalue(), "application/x-npz")
    batch = parse_table(rows, labels, parse_app({"name": "a", "data_type": "audio",
                                                 "sample_rate": 8000}), None, "b1")
    assert [x.shape for x in batch.features] == [(4000,), (6000,)] and batch.shape is None
    assert batch.features[0].max() == 0.5 and batch.labels == ["a", "b"]
    with pytest.raises(Invalid, match="only an audio app"):
        parse_table(rows, labels, parse_app({"name": "v", "data_type": "vector"}), None, None)
    body = io.BytesIO()
    np.savez(body, X=X, y=np.array(["a", "b"]), lengths=np.array([4000, 7000]))
    with pytest.raises(Invalid, match="each from 1 to 6000"):
        read_table(body.getvalue(), "application/x-npz")
