"""A stream app's page in a real browser, against a real daemon: its channels on the timeline,
a span labelled by its start and end (and by a drag), the labelled span shaded, user-typed
labels shown as text, the channels' staleness and the live activity.

As in test_dashboard: elements are found by their text, label or role (the drawing's rows and
spans by the data attributes that name them), and every wait is for something a person sees.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from browser.test_dashboard import _literal, button, console_errors, labelled, see
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from support import DaemonProcess, wait_for

pytestmark = pytest.mark.timeout(120)
RENDERED = (StaleElementReferenceException,)
WINDOW_S, HOP_S = 2.0, 0.5
KITCHEN = f"""
[[apps]]
name = "kitchen"
data_type = "sensor"
window_s = {WINDOW_S}
hop_s = {HOP_S}
sample_hz = 10.0
min_dwell_s = 1.0
[[apps.channels]]
name = "power"
resample = "hold"
[[apps.channels]]
name = "vibration"
resample = "mean"
stale_s = 3.0
"""
TIMELINE = "//*[@aria-label='Channel timeline']"


def expected_windows(start: float, end: float) -> int:
    """Windows (ends on the hop grid) lying wholly inside ``[start, end]``."""
    return math.floor(end / HOP_S) - math.ceil((start + WINDOW_S) / HOP_S) + 1


def kitchen(daemon_factory: Any) -> DaemonProcess:
    d = daemon_factory()
    d.write_config(extra=KITCHEN)
    return d.start()


def post_minute(d: DaemonProcess, on: tuple[float, float] = (20.0, 40.0)) -> float:
    """The last minute of a kettle: power once a second, vibration ten times a second, the
    kettle on from ``on[0]`` to ``on[1]`` s into it. Returns the minute's first reading time."""
    first = time.time() - 60.0
    readings = []
    for i in range(600):
        t, boiling = first + i / 10, on[0] <= i / 10 < on[1]
        readings.append({"t": round(t, 3), "channel": "vibration",
                         "value": (3.0 if boiling else 0.2) + 0.01 * (i % 7)})
        if i % 10 == 0:
            readings.append({"t": round(t, 3), "channel": "power",
                             "value": 1830.5 if boiling else 0.4})
    status, body = d.request("POST", "/v1/apps/kitchen/readings", {"readings": readings})
    assert status == 200 and body["accepted"] == len(readings), body
    return first


def type_span(driver: Any, start: float, end: float, label: str) -> None:
    for name, value in (("Span start", start), ("Span end", end), ("Span label", label)):
        field = labelled(driver, name)
        field.clear()
        field.send_keys(str(value))
    button(driver, "Label span").click()


def shaded(driver: Any, label: str) -> Any:
    """The timeline's shaded span of ``label``, once drawn."""
    xpath = f"{TIMELINE}//*[@data-label={_literal(label)}]"
    return WebDriverWait(driver, 10, 0.1, RENDERED).until(
        lambda b: b.find_elements(By.XPATH, xpath), f"no shaded span {label!r}")[0]


def test_a_span_typed_on_the_timeline_is_labelled_and_shaded(daemon_factory: Any,
                                                             browser: Any) -> None:
    d = kitchen(daemon_factory)
    first = post_minute(d)
    browser.get(d.url + "/#/app/kitchen")

    # both channels drawn, each a named row with a line through its readings
    def rows_drawn(b: Any) -> bool:
        for name in ("power", "vibration"):
            row = b.find_elements(By.XPATH, f"{TIMELINE}//*[@data-channel='{name}']")
            if not row or name not in row[0].get_attribute("textContent"):
                return False
            line = row[0].find_elements(By.TAG_NAME, "polyline")
            if not line or len(line[0].get_attribute("points").split()) < 50:
                return False
        return True

    WebDriverWait(browser, 15, 0.1, RENDERED).until(rows_drawn, "the channels were not drawn")
    assert browser.find_element(By.XPATH, TIMELINE).is_displayed()

    # a drag across the drawing fills the span's start and end
    surface = browser.find_element(By.XPATH, TIMELINE)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", surface)
    ActionChains(browser).move_to_element_with_offset(surface, 200, 0).click_and_hold() \
        .move_by_offset(80, 0).release().perform()
    dragged = [float(labelled(browser, n).get_attribute("value")) for n in ("Span start",
                                                                           "Span end")]
    assert time.time() - 700 < dragged[0] < dragged[1] <= time.time() + 1, dragged
    see(browser, "Selected")

    # typed start and end (the keyboard's way), away from the kettle's switches
    start, end = math.floor(first) + 21.3, math.floor(first) + 38.7
    type_span(browser, start, end, "kettle")
    n = expected_windows(start, end)
    see(browser, f"Labelled {n} windows as kettle", timeout=15)
    (stored,) = d.request("GET", "/v1/apps/kitchen/labels")[1]["labels"]
    assert (stored["label"], stored["start"], stored["end"], stored["windows"]) == (
        "kettle", start, end, n)
    span = shaded(browser, "kettle")
    assert span.find_elements(By.TAG_NAME, "rect")
    # the app now knows the label: the label field suggests it
    WebDriverWait(browser, 10, 0.1, RENDERED).until(
        lambda b: b.find_elements(By.XPATH, "//datalist/option[@value='kettle']"),
        "kettle is not suggested")

    # an overlapping span of another label is refused in the daemon's words
    type_span(browser, start + 5, end + 5, "idle")
    see(browser, "overlaps range", timeout=15)

    # a label typed as HTML is stored (the app declares no classes) and shown as text
    evil = "<img src=x onerror=alert(1)>"
    e0, e1 = end + 2.1, end + 12.4
    type_span(browser, e0, e1, evil)
    see(browser, f"Labelled {expected_windows(e0, e1)} windows as {evil}", timeout=15)
    shaded(browser, evil)
    see(browser, evil)  # in the list of labelled spans too
    assert browser.find_elements(By.TAG_NAME, "img") == []
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - raises when no alert was opened
    # the browser logs the refused overlap's 409 itself; nothing else may have gone wrong
    assert [e for e in console_errors(browser) if "status of 409" not in e] == []


def test_channel_state_and_the_live_activity(daemon_factory: Any, browser: Any) -> None:
    d = kitchen(daemon_factory)
    first = post_minute(d)
    for label, (a, b) in (("idle", (2.3, 18.7)), ("kettle", (21.3, 38.7)),
                          ("idle", (41.3, 58.7))):
        status, body = d.request("POST", "/v1/apps/kitchen/labels",
                                 {"label": label, "start": first + a, "end": first + b})
        assert status == 200 and body["windows"] > 0, body
    wait_for(lambda: d.request("GET", "/v1/apps/kitchen")[1]["ready"], 60, 0.2)
    browser.get(d.url + "/#/app/kitchen")

    def state_of(name: str) -> str:
        xpath = f"//table[caption='Channels']//tr[th[normalize-space(.)='{name}']]"
        rows = browser.find_elements(By.XPATH, xpath)
        return rows[0].text if rows else ""

    # vibration's readings stopped a minute's end ago: over its stale_s = 3 it is marked;
    # power has no stale_s and its last reading shows
    WebDriverWait(browser, 15, 0.1, RENDERED).until(
        lambda _: "stale" in state_of("vibration") and "fresh" in state_of("power"),
        "the channels' state never showed")
    assert "ago" in state_of("power")

    # the kettle boils again: the model's windows make it the activity, pushed to the page on
    # its WebSocket. The page's polls of the app are cut off first (Chromium's own URL block;
    # the stream's ws:// URL is another), so only the stream can bring it.
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": [f"{d.url}/v1/apps/kitchen"]})
    see(browser, "cannot be reached")
    now = time.time()
    readings = []
    for i in range(100):
        readings.append({"t": now + i / 10, "channel": "vibration", "value": 3.0})
        if i % 10 == 0:
            readings.append({"t": now + i / 10, "channel": "power", "value": 1830.5})
    assert d.request("POST", "/v1/apps/kitchen/readings", {"readings": readings})[0] == 200
    wait_for(lambda: (d.request("GET", "/v1/apps/kitchen")[1]["activity"] or {}).get("label")
             == "kettle", 20)
    WebDriverWait(browser, 10, 0.1, RENDERED).until(
        lambda b: b.find_elements(
            By.XPATH, "//p[starts-with(normalize-space(.), 'Activity: kettle since')]"),
        "the activity never showed")
    assert [e for e in console_errors(browser) if "ERR_BLOCKED_BY_CLIENT" not in e] == []
