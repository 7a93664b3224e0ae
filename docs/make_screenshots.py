"""Take the README's two dashboard screenshots (docs/overview.png, docs/app.png) in headless
Chromium, from a real daemon taught two demo apps. Run from the repository:
`.venv/bin/python docs/make_screenshots.py` (needs Debian's chromium and chromium-driver)."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests/browser")]

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from support import DaemonProcess, wait_for  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = DaemonProcess(Path(tmp))
        d.write_config(daemon_extra='name = "kitchen-nuc"')
        d.start()
        try:
            teach(d)
            shoot(d)
        finally:
            d.stop()


def teach(d: DaemonProcess) -> None:
    X, y = load_digits(return_X_y=True)
    d.request("PUT", "/v1/apps/digits", {"data_type": "vector", "shape": [64],
                                         "policy": {"retrain_after": 5}})
    d.teach("digits", X[:600], [str(t) for t in y[:600]])
    rng = np.random.default_rng(1)
    kettle = [("idle", 0.0), ("kettle", 1800.0), ("toaster", 900.0)]
    rows = [(rng.normal(p, 40, size=4).round(1), label) for label, p in kettle for _ in range(20)]
    d.request("PUT", "/v1/apps/kitchen", {"data_type": "vector",
                                          "classes": ["idle", "kettle", "toaster"],
                                          "policy": {"mode": "low_latency"}})
    d.teach("kitchen", np.array([r for r, _ in rows]), [label for _, label in rows])
    wait_for(lambda: not any(a["training"]["training"] for a in
                             d.request("GET", "/v1/status")[1]["apps"].values()), 300, 1)


def shoot(d: DaemonProcess) -> None:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 "--disable-background-networking", "--window-size=1100,1300"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(d.url + "/")
        time.sleep(3)
        driver.save_screenshot(str(ROOT / "docs/overview.png"))
        X, y = load_digits(return_X_y=True)
        driver.get(d.url + "/#/app/digits")
        time.sleep(2)
        for row in X[1000:1012]:
            d.request("POST", "/v1/apps/digits/predict", {"instances": [row.tolist()]})
            time.sleep(0.15)
        time.sleep(2)
        driver.save_screenshot(str(ROOT / "docs/app.png"))
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
