"""Front ends: output shapes per data type and clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest

from mliot_daemon.learn.errors import DataError
from mliot_daemon.learn.frontends import (
    MEL_BANDS,
    PATCH_FRAMES,
    PATCH_SAMPLES,
    encode_labels,
    log_mel_patches,
    make_front_end,
)
from mliot_daemon.learn.pipeline import prepare
from mliot_daemon.learn.sensor import SENSOR_BANDS, sensor_features

rng = np.random.default_rng(0)


def test_vector_is_standardized():
    X = rng.normal(5.0, 3.0, size=(50, 4))
    Z = make_front_end("vector").fit_transform(X)
    assert Z.shape == (50, 4)
    np.testing.assert_allclose(Z.mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(Z.std(axis=0), 1, atol=1e-9)


def test_image_scaled_and_flattened():
    X = rng.integers(0, 256, size=(6, 5, 4, 3)).astype(np.uint8)
    fe = make_front_end("image")
    Z = fe.fit_transform(X)
    assert Z.shape == (6, 60)
    assert Z.max() <= 1.0 and Z.min() >= 0.0
    assert fe.transform(X[:1]).shape == (1, 60)


def test_sensor_features_shape_and_values():
    W = rng.normal(size=(7, 3, 50))
    W[0, 1] = np.arange(50)  # a ramp: min 0, max 49
    fe = make_front_end("sensor")
    Z = fe.fit_transform(W)
    assert Z.shape == (7, 3 * (7 + SENSOR_BANDS))
    F = sensor_features(W)
    row = F[0].reshape(3, -1)[1]
    assert row[0] == 0 and row[1] == 49 and row[2] == 49  # min, max, range
    assert row[3] == pytest.approx(24.5) and row[4] == pytest.approx(sum(range(50)))


def test_audio_patches_follow_vggish_geometry():
    one_second = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    assert log_mel_patches(one_second[:PATCH_SAMPLES]).shape == (1, PATCH_FRAMES, MEL_BANDS)
    # 16,000 samples = 98 frames: one patch and a padded partial one
    assert log_mel_patches(one_second).shape == (2, 96, 64)
    assert log_mel_patches(one_second[:8000]).shape == (1, 96, 64)  # padded to one patch
    assert log_mel_patches(np.zeros(PATCH_SAMPLES + 2000)).shape == (2, 96, 64)
    silent = log_mel_patches(np.zeros(8000))
    np.testing.assert_allclose(silent, np.log(0.01))
    # a 440 Hz tone puts its energy in a low mel band, not the top one
    tone = log_mel_patches(one_second)[0].mean(axis=0)
    assert tone.argmax() < 20


def test_audio_front_end_inputs():
    fe = make_front_end("audio")
    clips = rng.normal(size=(4, 12000))
    Z = fe.fit_transform(clips)
    assert Z.shape[0] == 4 and Z.shape[1] == fe.n_features_
    ragged = [rng.normal(size=9000), rng.normal(size=40000)]
    assert fe.transform(ragged).shape == (2, fe.n_features_)
    logmel = rng.normal(size=(3, 96, 64))
    assert fe.transform(logmel).shape == (3, fe.n_features_)
    # other sample rates are resampled to 16 kHz
    fe8k = make_front_end("audio", sample_rate=8000)
    assert fe8k.fit_transform(rng.normal(size=(2, 8000))).shape == (2, fe.n_features_)


@pytest.mark.parametrize(("data_type", "X", "message"), [
    ("vector", np.zeros((4, 2, 2)), "(n, d)"),
    ("vector", np.zeros((0, 3)), "empty"),
    ("vector", np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN"),
    ("vector", np.array([[1.0, np.inf], [0.0, 1.0]]), "NaN or infinite"),
    ("image", np.zeros((4, 8)), "(n, h, w)"),
    ("sensor", np.zeros((4, 8)), "(n, channels, time)"),
    ("audio", np.zeros((2, 100)), "at least 0.5 s"),
    ("audio", np.zeros((2, 3, 4, 5)), "raw clips"),
    ("audio", [], "empty"),
    ("vector", [[1, 2], [3]], "numeric array"),
])
def test_bad_input_is_a_clear_data_error(data_type, X, message):
    with pytest.raises(DataError, match=None) as info:
        make_front_end(data_type).fit_transform(X)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unknown_type_and_shape_mismatch():
    with pytest.raises(DataError, match="unknown data type"):
        make_front_end("video")
    fe = make_front_end("vector")
    fe.fit(np.zeros((3, 4)))
    with pytest.raises(DataError, match="expects 4"):
        fe.transform(np.zeros((1, 5)))


def test_single_class_and_bad_labels():
    with pytest.raises(DataError, match="at least 2 classes"):
        prepare(np.zeros((10, 3)), ["a"] * 10)
    with pytest.raises(DataError, match="1-D"):
        encode_labels(np.zeros((3, 2)))
    with pytest.raises(DataError, match="empty"):
        encode_labels([])
    with pytest.raises(DataError, match="3 samples but 2 labels"):
        prepare(np.zeros((3, 2)), ["a", "b"])


def test_labels_become_strings():
    codes, names = encode_labels([3, 1, 3, 2])
    assert names == ["1", "2", "3"]
    assert codes.tolist() == [2, 0, 2, 1]


def test_audio_summaries_and_the_served_vector_path():
    from mliot_daemon.learn.frontends import AUDIO_SUMMARIES, AUDIO_SUMMARY, summarize_log_mel

    patches = np.random.default_rng(0).normal(size=(2, 96, 64))
    dims = {k: summarize_log_mel(patches, k).shape for k in AUDIO_SUMMARIES}
    assert dims == {"stats": (320,), "stats_seg4": (576,), "stats_seg8": (704,)}
    assert AUDIO_SUMMARY in AUDIO_SUMMARIES
    with pytest.raises(ValueError, match="unknown audio summary"):
        summarize_log_mel(patches, "mfcc")
    fe = make_front_end("vector").fit(np.arange(20.0).reshape(5, 4))
    row = np.array([[1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_array_equal(fe.transform(row), fe.transform(row.tolist()))
    with pytest.raises(DataError, match="NaN"):
        fe.transform(np.array([[1.0, np.nan, 3.0, 4.0]]))


def test_a_sensor_front_end_saved_before_the_move_still_loads():
    """Versions saved before the sensor front end had its own module name the old module."""
    import pickle

    from mliot_daemon.learn import frontends

    W = rng.normal(size=(6, 2, 40))
    fe = make_front_end("sensor").fit(W)
    # protocol 0 names classes in plain text lines, so the module can be swapped in place
    old = pickle.dumps(fe, protocol=0).replace(b"mliot_daemon.learn.sensor\n",
                                               b"mliot_daemon.learn.frontends\n")
    assert b"mliot_daemon.learn.frontends\nSensorFrontEnd" in old
    back = pickle.loads(old)
    del back.__dict__["blocks"]  # nor did it have blocks: the statistics alone
    np.testing.assert_array_equal(back.transform(W), fe.transform(W))
    assert frontends.SensorFrontEnd is type(fe)
