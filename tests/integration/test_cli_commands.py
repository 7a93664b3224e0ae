"""The CLI's commands against one live daemon (a real subprocess on 127.0.0.1, real SQLite):
apps, models, activate, reload, status, check-config, doctor, export and import, watch and
feedback; their tables, ``--json``, and the documented exit codes (README: "Exit codes").

Most commands run in-process through ``cli.main`` (fast); a few run as real processes, so the
exit codes are seen to come out of the process itself."""

from __future__ import annotations

import contextlib
import csv
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import DaemonProcess, free_port, wait_for

from mliot_daemon.cli import main

pytestmark = pytest.mark.timeout(300)
TOKEN = "cli-token"
SHAPE = (3, 20)


def mliot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mliot_daemon", *args], capture_output=True,
                          text=True, timeout=60)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``mliot ARGS`` in this process: (exit code, stdout, stderr)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def motion_rows(n: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Flat rows of a 3-channel, 20-step sensor: "still" near 0, "shake" near 3."""
    rng = np.random.default_rng(seed)
    labels = ["still" if i % 2 else "shake" for i in range(n)]
    X = np.stack([rng.normal(0.0 if label == "still" else 3.0, 0.5, size=60) for label in labels])
    return X.round(3).astype(np.float32), labels


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon for the module, with a token (the CLI finds it, and the URL, in --config)."""
    daemon = DaemonProcess(tmp_path_factory.mktemp("cli"))
    daemon.write_config(daemon_extra=f'token = "{TOKEN}"')
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def motion(d: DaemonProcess, tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[np.ndarray, list[str]]:
    """A sensor app of shape [3, 20] fed, by `mliot import`, a CSV of flat 60-value rows with
    their label last (no header); it has a model once this returns."""
    assert d.request("PUT", "/v1/apps/motion", {"data_type": "sensor", "shape": list(SHAPE)},
                     token=TOKEN)[0] == 201
    X, y = motion_rows(60)
    path = tmp_path_factory.mktemp("motion") / "motion.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([*map(str, row.tolist()), label]
                                for row, label in zip(X, y, strict=True))
    assert main(["import", "motion", str(path), "--config", str(d.config_path)]) == 0
    wait_for(lambda: d.request("GET", "/v1/apps/motion")[1]["model_version"], 120, 0.3)
    return X, y


def test_exit_codes_come_out_of_the_process(d: DaemonProcess, tmp_path: Path) -> None:
    conf = ["--config", str(d.config_path)]
    usage = mliot("models", *conf)  # APP missing
    assert usage.returncode == 2 and "app" in usage.stderr
    down = mliot("apps", "--url", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 3
    assert down.stderr.startswith("mliot apps: cannot reach the daemon")
    unknown = mliot("models", "nope", *conf)
    assert unknown.returncode == 4
    assert unknown.stderr.strip() == "mliot models: unknown app 'nope' (HTTP 404)"
    bad = tmp_path / "bad.toml"
    bad.write_text('[daemon]\nlisten = "127.0.0.1:80800"\n[training]\nworkerz = 2\n')
    checked = mliot("check-config", str(bad))
    assert checked.returncode == 4 and checked.stdout == ""
    assert f"mliot check-config: {bad}: daemon.listen: must be HOST:PORT" in checked.stderr
    assert f"mliot check-config: {bad}: training.workerz: unknown key" in checked.stderr


def test_check_config_in_process(d: DaemonProcess, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "check-config", str(d.config_path))
    assert code == 0 and re.search(r"^valid +yes$", out, re.MULTILINE)
    code, out, _ = run(capsys, "check-config", str(d.config_path), "--json")
    assert code == 0 and json.loads(out)["valid"] is True and json.loads(out)["token"] is True
    code, _, err = run(capsys, "check-config", str(tmp_path / "missing.toml"))
    assert code == 2 and "no such file" in err
    (tmp_path / "broken.toml").write_text("[daemon\n")
    code, out, err = run(capsys, "check-config", str(tmp_path / "broken.toml"), "--json")
    assert code == 4 and json.loads(out)["valid"] is False and "not valid TOML" in err


def test_admin_commands(d: DaemonProcess, motion: Any, capsys: pytest.CaptureFixture[str]
                        ) -> None:
    conf = ["--config", str(d.config_path)]
    code, out, _ = run(capsys, "apps", *conf)
    assert code == 0
    header, row = out.splitlines()[:2]
    assert header.split() == ["APP", "TYPE", "SHAPE", "SAMPLES", "FEEDBACK", "VERSION", "READY",
                              "CLASSES"]
    assert row.split()[:4] == ["motion", "sensor", "3x20", "60"]
    assert row.split()[-1] == "shake,still"
    code, out, _ = run(capsys, "apps", "--json", *conf)
    assert [a["name"] for a in json.loads(out)] == ["motion"]

    code, out, _ = run(capsys, "models", "motion", "--json", *conf)
    models = json.loads(out)
    current = models["current"]
    assert code == 0 and current == models["versions"][0]["version"]
    code, out, _ = run(capsys, "models", "motion", *conf)
    assert out.splitlines()[1].split()[0] == f"*{current}"
    code, out, _ = run(capsys, "activate", "motion", str(current), *conf)
    assert (code, out.strip()) == (0, f"motion: version {current} is served now")
    code, out, err = run(capsys, "activate", "motion", "999", *conf)
    assert code == 4 and out == ""
    assert err.strip() == "mliot activate: no kept version '999' (HTTP 404)"

    code, out, _ = run(capsys, "status", *conf)
    assert code == 0 and "config version" in out and "motion" in out
    code, out, _ = run(capsys, "status", "--json", *conf)
    assert "motion" in json.loads(out)["apps"]


def test_reload(d: DaemonProcess, capsys: pytest.CaptureFixture[str]) -> None:
    conf = ["--config", str(d.config_path)]
    code, out, _ = run(capsys, "reload", "--json", *conf)
    assert code == 0 and json.loads(out)["changed"] == []
    code, out, _ = run(capsys, "reload", *conf)
    assert code == 0 and re.search(r"^changed +nothing$", out, re.MULTILINE)
    direct = ["--url", d.url]
    code, _, err = run(capsys, "reload", *direct, "--token", "wrong")
    assert code == 4 and "bearer token" in err
    good = d.config_path.read_text()
    try:
        d.config_path.write_text(good + "[training]\nworkers = -3\n")
        code, _, err = run(capsys, "reload", *direct, "--token", TOKEN)
    finally:
        d.config_path.write_text(good)
    assert code == 4
    assert "configuration rejected" in err and "training.workers: must be >= 0" in err


def test_doctor(d: DaemonProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The daemon's own config, plus a broker nobody runs: the port is held by a daemon that
    answers (fine), the broker fails, so exit 1; the pool starts."""
    config = tmp_path / "doctor.toml"
    config.write_text(d.config_path.read_text() +
                      f'[mqtt]\nurl = "mqtt://127.0.0.1:{free_port()}"\n')
    code, out, _ = run(capsys, "doctor", "--config", str(config), "--json")
    checks = {c["check"]: c for c in json.loads(out)["checks"]}
    assert code == 1 and json.loads(out)["ok"] is False
    assert checks["port"]["ok"] and "an mliot daemon runs there" in checks["port"]["detail"]
    assert not checks["broker"]["ok"]
    assert all(checks[k]["ok"] for k in ("config", "data dir", "token", "libraries", "pool"))
    assert "GiB free" in checks["data dir"]["detail"]
    code, out, _ = run(capsys, "doctor", "--config", str(tmp_path / "nope.toml"))
    assert code == 1 and out.split()[3:5] == ["config", "FAILED"]


def test_export_round_trips_through_import(d: DaemonProcess, motion: Any, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    X, y = motion
    conf = ["--config", str(d.config_path)]
    status, answer = d.request("POST", "/v1/apps/motion/predict",
                               {"instances": [X[0].reshape(SHAPE).tolist()]})
    assert status == 200
    prediction = answer["predictions"][0]
    code, out, _ = run(capsys, "feedback", "motion", prediction["id"], "still", "--json", *conf)
    assert code == 0 and json.loads(out)["label"] == "still"

    npz, flat = tmp_path / "motion.npz", tmp_path / "motion.csv"
    code, out, _ = run(capsys, "export", "motion", str(npz), "--json", *conf)
    assert code == 0
    assert json.loads(out) | {"rows": 61, "samples": 60, "corrections": 1} == json.loads(out)
    with np.load(npz) as data:
        got = {k: data[k] for k in data}
    assert set(got) == {"X", "y", "kind", "source", "predicted", "created"}  # no lengths
    assert got["X"].shape == (61, *SHAPE) and got["X"].dtype == np.float32
    np.testing.assert_array_equal(got["X"][:60], X.reshape(60, *SHAPE))
    assert got["y"].tolist() == [*y, "still"]
    assert got["kind"].tolist() == ["sample"] * 60 + ["correction"]
    assert got["source"][-1] == "feedback" and got["predicted"][-1] == prediction["label"]
    code, out, _ = run(capsys, "export", "motion", "--format", "csv", str(flat), *conf)
    assert code == 0 and "corrections  1" in out
    rows = read_csv(flat)
    assert rows[0][:2] == ["x0", "x1"] and rows[0][-1] == "label" and len(rows) == 62
    np.testing.assert_array_equal(np.array([r[:-1] for r in rows[1:]], dtype=np.float32),
                                  got["X"].reshape(61, -1))

    # into a copy: the CSV (flat rows reshaped by the daemon), then the npz; both as exported
    assert d.request("PUT", "/v1/apps/motion-copy", {"data_type": "sensor",
                                                     "shape": list(SHAPE)}, token=TOKEN)[0] == 201
    try:
        for path, total in ((flat, 61), (npz, 122)):
            code, out, _ = run(capsys, "import", "motion-copy", str(path), "--json", *conf)
            assert code == 0 and json.loads(out)["n_samples"] == total
        again = tmp_path / "copy.npz"
        assert run(capsys, "export", "motion-copy", str(again), *conf)[0] == 0
        with np.load(again) as data:
            np.testing.assert_array_equal(data["X"], np.concatenate([got["X"], got["X"]]))
            assert data["y"].tolist() == got["y"].tolist() * 2
            assert set(data["kind"].tolist()) == {"sample"}  # imported: samples now
    finally:
        d.request("DELETE", "/v1/apps/motion-copy", token=TOKEN)

    code, _, err = run(capsys, "export", "motion", "--format", "npz", str(flat), *conf)
    assert code == 2 and "suffix" in err and rows == read_csv(flat)  # untouched
    code, _, err = run(capsys, "export", "nope", str(npz), *conf)
    assert code == 4 and "unknown app 'nope'" in err
    status, body = d.request("GET", "/v1/apps/motion/export?format=xml")
    assert status == 400 and "npz or csv" in body["error"]


def test_audio_clips_export_padded_with_lengths(d: DaemonProcess, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Clips of several lengths: padded in the npz, with their lengths, and cut back to them
    on import; CSV (one width per file) is refused."""
    conf = ["--config", str(d.config_path)]
    spec = {"data_type": "audio", "sample_rate": 8000}
    rng = np.random.default_rng(2)
    lengths = [4000, 6000, 4500, 5000]  # under 5 a class: no training run
    clips = [rng.uniform(-1, 1, n).astype(np.float32) for n in lengths]
    try:
        for app in ("clips", "clips-copy"):
            assert d.request("PUT", f"/v1/apps/{app}", spec, token=TOKEN)[0] == 201
        body = {"samples": [{"features": c.tolist(), "label": "ab"[i % 2]}
                            for i, c in enumerate(clips)]}
        assert d.request("POST", "/v1/apps/clips/samples", body, token=TOKEN)[0] == 200
        out = tmp_path / "clips.npz"
        assert run(capsys, "export", "clips", str(out), *conf)[0] == 0
        with np.load(out) as data:
            assert data["X"].shape == (4, 6000) and data["lengths"].tolist() == lengths
            for row, clip in zip(data["X"], clips, strict=True):
                np.testing.assert_array_equal(row[:len(clip)], clip)
                assert not row[len(clip):].any()
        code, _, err = run(capsys, "export", "clips", str(tmp_path / "clips.csv"), *conf)
        assert code == 4 and "export npz" in err
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("clips.csv")]

        assert run(capsys, "import", "clips-copy", str(out), *conf)[0] == 0
        again = tmp_path / "again.npz"
        assert run(capsys, "export", "clips-copy", str(again), *conf)[0] == 0
        with np.load(out) as first, np.load(again) as second:
            np.testing.assert_array_equal(first["X"], second["X"])
            assert second["lengths"].tolist() == lengths
    finally:
        for app in ("clips", "clips-copy"):
            d.request("DELETE", f"/v1/apps/{app}", token=TOKEN)


def test_watch_prints_ids_that_feedback_takes(d: DaemonProcess, motion: Any,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    X, _ = motion
    conf = ["--config", str(d.config_path)]
    watcher = subprocess.Popen([sys.executable, "-m", "mliot_daemon", "watch", "motion", *conf],
                               stdout=subprocess.PIPE, text=True)
    assert watcher.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in watcher.stdout],
                              daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        seen = ""
        while not seen.startswith("[predict]"):  # predict until the watcher has connected
            assert time.monotonic() < deadline, "no prediction seen"
            d.request("POST", "/v1/apps/motion/predict",
                      {"instances": [X[1].reshape(SHAPE).tolist()]})
            with contextlib.suppress(queue.Empty):
                seen = lines.get(timeout=0.5)
        _, prediction_id, label, *rest = seen.split()
        assert rest[-1] == "http"
        code, out, _ = run(capsys, "feedback", "motion", prediction_id, label, *conf)
        assert code == 0 and f"prediction_id  {prediction_id}" in out
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(30) == 0
    finally:
        watcher.kill()
        watcher.wait(30)
        reader.join(30)
        watcher.stdout.close()
    code, _, err = run(capsys, "watch", "nope", *conf)
    assert code == 4 and "nope: unknown app (HTTP 404)" in err
