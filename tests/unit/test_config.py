"""The config parser: defaults, every error with its path, reload, diff."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from mliot_daemon.config import (
    Applied,
    ConfigError,
    ConfigStore,
    Rejected,
    changed_keys,
    load_file,
    parse_app,
    parse_settings,
)
from mliot_daemon.settings import DEFAULT_FILE


def test_shipped_file_equals_builtin_defaults() -> None:
    assert load_file(DEFAULT_FILE) == parse_settings({})


def test_every_error_is_reported_with_its_path() -> None:
    raw = {
        "daemon": {"listen": "nowhere", "max_body_mb": -1, "colour": "red"},
        "training": {"workers": "two"},
        "apps": [
            {"name": "ok", "data_type": "vector"},
            {"name": "ok2", "data_type": "vector"},
            {"name": "Bad Name", "data_type": "smell", "policy": {"latency_ms": 0}},
        ],
    }
    with pytest.raises(ConfigError) as info:
        parse_settings(raw)
    errors = info.value.errors
    for expected in ("daemon.listen: must be HOST:PORT", "daemon.max_body_mb: must be > 0",
                     "daemon.colour: unknown key", "training.workers: must be an integer",
                     "apps[2].name: must match", "apps[2].data_type: must be one of",
                     "apps[2].policy.latency_ms: must be > 0"):
        assert any(e.startswith(expected) for e in errors), (expected, errors)


def test_policy_defaults_follow_the_mode() -> None:
    low = parse_app({"name": "a", "data_type": "vector", "policy": {"mode": "low_latency"}})
    best = parse_app({"name": "b", "data_type": "vector"})
    assert (low.policy.latency_ms, low.policy.max_models) == (10.0, 3)
    assert (best.policy.latency_ms, best.policy.max_models) == (50.0, 7)


def test_app_cross_field_rules() -> None:
    with pytest.raises(ConfigError) as info:
        parse_app({"name": "a", "data_type": "audio", "shape": [3],
                   "classes": ["x", "y"], "background_class": "z"})
    assert any(e.startswith("app.shape: not for audio") for e in info.value.errors)
    assert any(e.startswith("app.background_class: must be one of classes")
               for e in info.value.errors)
    assert parse_app({"name": "n", "data_type": "vector", "classes": [0, 1]}).classes == ("0", "1")
    assert parse_app({"name": "k", "data_type": "audio"}).sample_rate == 16000


def test_token_required_off_loopback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings({"daemon": {"listen": "0.0.0.0:8080"}})
    assert info.value.errors == ["daemon.token: required when daemon.listen is not a loopback "
                                 "address"]
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    s = parse_settings({"daemon": {"listen": "0.0.0.0:8080", "token_file": str(token_file)}})
    assert s.token == "s3cret"


def test_changed_keys_names_what_differs() -> None:
    a = parse_settings({})
    b = parse_settings({"daemon": {"log_level": "debug", "listen": "127.0.0.1:9"},
                        "apps": [{"name": "x", "data_type": "vector"}]})
    assert changed_keys(a, b) == {"daemon.log_level", "daemon.listen", "apps"}


async def test_reload_rejects_bad_file_and_keeps_old(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[daemon]\nlog_level = "info"\n')
    store = ConfigStore(path, load_file(path))
    calls: list[frozenset[str]] = []

    async def listener(settings, changed, version):  # type: ignore[no-untyped-def]
        calls.append(changed)

    store.subscribe(listener)
    path.write_text('[daemon]\nlog_level = "loud"\n')
    with capture_logs() as logs:
        outcome = await store.reload("test")
    assert isinstance(outcome, Rejected) and store.version == 1
    assert outcome.errors[0].startswith("daemon.log_level: must be one of")
    assert store.current.daemon.log_level == "info" and calls == []
    assert [e["event"] for e in logs] == ["config_reload_rejected"]

    path.write_text('[daemon]\nlog_level = "debug"\nlisten = "127.0.0.1:9999"\n')
    outcome = await store.reload("test")
    assert isinstance(outcome, Applied) and outcome.version == 2
    assert outcome.restart_required == {"daemon.listen"}
    assert calls == [frozenset({"daemon.log_level", "daemon.listen"})]
    assert store.restart_required == {"daemon.listen"}


# -- property: the parser never crashes, and every error has a path --------------------------

toml_scalar = st.one_of(st.booleans(), st.integers(-10**6, 10**6),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
toml_value = st.recursive(
    toml_scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12)
known_keys = st.sampled_from(["daemon", "training", "mqtt", "peers", "apps", "name", "listen",
                              "data_type", "policy", "latency_ms", "shape", "classes", "token"])
config_like = st.dictionaries(st.one_of(known_keys, st.text(max_size=8)), toml_value, max_size=5)


@settings(max_examples=300, deadline=None)
@given(config_like)
def test_parser_never_crashes_and_errors_have_paths(raw: dict) -> None:
    try:
        parse_settings(raw)
    except ConfigError as exc:
        assert exc.errors
        for error in exc.errors:
            path, sep, why = error.partition(": ")
            assert sep and path and why, error


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["name", "data_type", "shape", "classes", "policy",
                                        "sample_rate", "background_class", "extra"]),
                       toml_value, max_size=6))
def test_app_parser_never_crashes(raw: dict) -> None:
    try:
        parse_app(raw)
    except ConfigError as exc:
        assert all(": " in e for e in exc.errors)


def test_example_files_are_valid() -> None:
    examples = sorted((DEFAULT_FILE.parent / "examples").glob("*.toml"))
    assert examples
    for path in examples:
        parse_settings(tomllib.loads(path.read_text()))


async def test_reload_cannot_drop_the_token_while_bound_publicly(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[daemon]\nlisten = "0.0.0.0:8080"\ntoken = "s3cret"\n')
    store = ConfigStore(path, load_file(path))
    path.write_text('[daemon]\nlisten = "127.0.0.1:8080"\n')  # listen applies only at restart
    outcome = await store.reload("test")
    assert isinstance(outcome, Rejected) and store.current.daemon.token == "s3cret"
    assert outcome.errors[0].startswith("daemon.token: required while listening on 0.0.0.0:8080")


def test_secrets_are_read_once_and_bad_secret_files_are_errors(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    s = parse_settings({"daemon": {"token_file": str(token_file)}})
    token_file.unlink()  # a file that turns unreadable later fails nothing that runs
    assert s.token == "s3cret"
    token_file.write_bytes(b"\xff\xfe not utf-8")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError) as info:
        parse_settings({"daemon": {"token_file": str(token_file),
                                   "peer_secret_file": str(empty)}})
    assert any(e.startswith("daemon.token_file:") and "not UTF-8" in e
               for e in info.value.errors)
    assert any(e.startswith("daemon.peer_secret_file:") and "empty" in e
               for e in info.value.errors)
    with pytest.raises(ConfigError) as info:
        parse_settings({"daemon": {"token": "same", "peer_secret": "same"}})
    assert info.value.errors[0].startswith("daemon.peer_secret: must differ from daemon.token")
    with pytest.raises(ConfigError) as info:
        parse_settings({"secrets": {"token": "x"}})  # derived, never a key of the file
    assert info.value.errors == ["secrets: unknown key"]


def test_peer_token_is_an_alias_of_secret_with_a_warning() -> None:
    s = parse_settings({"peers": [{"name": "b", "url": "http://b:1", "token": "old"}]})
    assert s.peers[0].secret == "old" and s.peers[0].token == ""
    assert s.warnings and "peers[0].token: deprecated" in s.warnings[0]
    with pytest.raises(ConfigError):
        parse_settings({"peers": [{"name": "b", "url": "http://b:1", "token": "x",
                                   "secret": "y"}]})


@pytest.mark.parametrize("content", [
    b'[daemon]\nname = "caf\xe9"\n',  # latin-1, not UTF-8
    b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n",  # nested deeper than the parser recurses
    b"[daemon]\nname = " + b"9" * 5000 + b"\n",  # an integer past Python's digit limit
])
async def test_undecodable_or_hostile_files_are_rejected(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[daemon]\nlog_level = "info"\n')
    store = ConfigStore(path, load_file(path))
    path.write_bytes(content)
    with capture_logs() as logs:
        outcome = await store.reload("test")
    assert isinstance(outcome, Rejected) and store.version == 1
    assert outcome.errors[0].startswith(f"{path}: not ")
    assert [e["event"] for e in logs] == ["config_reload_rejected"]
