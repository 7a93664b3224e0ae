"""Generate a synthetic spoken-digit audio set with espeak-ng into bench/data/spoken_digits.npz.

Ten classes ("zero" .. "nine") spoken by several espeak-ng voices at several speeds and
pitches, resampled to 16 kHz mono, each clip padded or cut to 1.0 s with a random offset, plus
a little white noise, so the classes are learnable but not trivial. Train and test use
disjoint voice/speed/pitch combinations (70/30, stratified by word, seed 0).

Usage: ``python -m bench.make_audio`` (needs the ``espeak-ng`` program: apt install espeak-ng).
"""

from __future__ import annotations

import io
import itertools
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
VOICES = ["en", "en-us", "en-gb-scotland", "en-029", "en+f3", "en+m3", "en-us+f2", "en+m7"]
SPEEDS = [120, 150, 180, 210]
PITCHES = [30, 50, 70]
RATE = 16_000
CLIP = RATE  # 1.0 s


def speak(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """One utterance as float32 at 16 kHz."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch),
                          "--stdout", word], check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768
    g = np.gcd(rate, RATE)
    return resample_poly(x, RATE // g, rate // g).astype(np.float32)


def make(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    combos = list(itertools.product(VOICES, SPEEDS, PITCHES))
    order = rng.permutation(len(combos))
    n_test = int(round(0.3 * len(combos)))
    test_combos = {combos[i] for i in order[:n_test]}
    X = {"train": [], "test": []}
    y = {"train": [], "test": []}
    for word in WORDS:
        for combo in combos:
            x = speak(word, *combo)
            clip = np.zeros(CLIP, dtype=np.float32)
            x = x[:CLIP]
            off = int(rng.integers(0, CLIP - len(x) + 1))
            clip[off:off + len(x)] = x
            clip += rng.normal(0, 0.003, CLIP).astype(np.float32)
            side = "test" if combo in test_combos else "train"
            X[side].append(clip)
            y[side].append(word)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, X_train=np.stack(X["train"]), y_train=np.array(y["train"]),
                        X_test=np.stack(X["test"]), y_test=np.array(y["test"]))
    return path


if __name__ == "__main__":
    out = make(Path(__file__).resolve().parent / "data" / "spoken_digits.npz")
    print(out, file=sys.stderr)
