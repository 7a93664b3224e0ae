"""The dashboard in a real browser, against a real daemon: what a person sees and clicks.

Elements are found as a person finds them: by their text, their label or their role, never by
CSS paths; every wait is for something a person would see.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from selenium.common.exceptions import (
    NoAlertPresentException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from support import DaemonProcess, borderline, teach_doubtful_room, wait_for

pytestmark = pytest.mark.timeout(600)
RENDERED = (StaleElementReferenceException,)  # the page re-rendered what a wait was reading
SPEC = {"data_type": "vector", "classes": ["calm", "busy"], "policy": {"retrain_after": 3}}


def blobs(n: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    y = ["calm" if i % 2 else "busy" for i in range(n)]
    X = np.array([rng.normal(0.0 if c == "calm" else 6.0, 1.0, size=2) for c in y])
    return X.round(3), y


def trained(d: DaemonProcess, app: str = "room", spec: dict[str, Any] = SPEC,
            token: str = "") -> DaemonProcess:
    assert d.request("PUT", f"/v1/apps/{app}", spec, token=token)[0] == 201
    X, y = blobs(40)
    body = {"samples": [{"features": x.tolist(), "label": t} for x, t in zip(X, y, strict=True)]}
    assert d.request("POST", f"/v1/apps/{app}/samples", body, token=token)[0] == 200
    wait_for(lambda: d.request("GET", f"/v1/apps/{app}")[1]["ready"], 120, 0.5)
    return d


def see(driver: Any, text: str, timeout: float = 10.0) -> Any:
    """The first visible element whose own text contains ``text`` (as a person reads it)."""
    xpath = f"//*[contains(normalize-space(text()), {_literal(text)})]"

    def found(_: Any) -> Any:
        return next((e for e in driver.find_elements(By.XPATH, xpath) if e.is_displayed()),
                    False)
    return WebDriverWait(driver, timeout, 0.1, RENDERED).until(found, f"{text!r} never showed")


def button(driver: Any, name: str, timeout: float = 10.0) -> Any:
    """A button by its visible name or its accessible label."""
    xpath = (f"//button[normalize-space(.)={_literal(name)} or "
             f"@aria-label={_literal(name)}]")
    return WebDriverWait(driver, timeout, 0.1, RENDERED).until(
        lambda _: next((e for e in driver.find_elements(By.XPATH, xpath) if e.is_displayed()),
                       False), f"no button {name!r}")


def press(driver: Any, name: str, timeout: float = 10.0) -> None:
    """Click a button by its name; again if the page re-rendered it meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            button(driver, name, max(0.1, deadline - time.monotonic())).click()
            return
        except StaleElementReferenceException:
            if time.monotonic() > deadline:
                raise


def labelled(driver: Any, label: str, timeout: float = 10.0) -> Any:
    """A form control by its label (``<label for>``) or its ``aria-label``."""
    def found(_: Any) -> Any:
        for lab in driver.find_elements(By.XPATH, f"//label[contains(., {_literal(label)})]"):
            return driver.find_element(By.ID, lab.get_attribute("for"))
        hits = driver.find_elements(By.XPATH, f"//*[contains(@aria-label, {_literal(label)})]")
        return hits[0] if hits else False
    return WebDriverWait(driver, timeout, 0.1, RENDERED).until(
        found, f"no control labelled {label!r}")


def _literal(text: str) -> str:
    if "'" not in text:
        return f"'{text}'"
    return "concat(" + ", \"'\", ".join(f"'{part}'" for part in text.split("'")) + ")"


def console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_overview_lists_a_trained_app_with_its_version_and_accuracy(
        daemon: DaemonProcess, browser: Any) -> None:
    d = trained(daemon)
    browser.get(d.url + "/")
    see(browser, "room")

    def shows_what_is_served() -> bool:
        """The card (read anew: the overview redraws every 2 s) names the version the daemon
        serves and its members; lazy training may publish another meanwhile."""
        served = d.request("GET", "/v1/status")[1]["apps"]["room"]
        try:
            text = browser.find_element(By.XPATH, "//article[@aria-label='App room']").text
        except StaleElementReferenceException:
            return False
        return (f"v{served['model_version']}" in text and served["members"][0] in text
                and "validation" in text and "%" in text)

    wait_for(shows_what_is_served, 30)
    see(browser, "Loop lag")  # the machine panel
    assert console_errors(browser) == []


def test_a_prediction_shows_within_two_seconds_and_corrections_make_a_version(
        daemon: DaemonProcess, browser: Any) -> None:
    d = trained(daemon)
    browser.get(d.url + "/#/app/room")
    see(browser, "Watching every channel")
    started = time.monotonic()
    (first,) = d.request("POST", "/v1/apps/room/predict", {"instances": [[0.1, 0.2]]})[1][
        "predictions"]
    picker = labelled(browser, f"Correct label for {first['id']}", timeout=2.0)
    assert time.monotonic() - started < 2.0
    row = picker.find_element(By.XPATH, "./ancestor::tr")
    assert "http" in row.text and first["label"] in row.text
    # correct it, and two more: retrain_after = 3 corrections adapt the model
    for i, point in enumerate(([0.1, 0.2], [0.3, -0.2], [-0.4, 0.1])):
        if i:
            (p,) = d.request("POST", "/v1/apps/room/predict", {"instances": [point]})[1][
                "predictions"]
            picker = labelled(browser, f"Correct label for {p['id']}")
        other = "busy" if picker.get_attribute("value") == "calm" else "calm"
        Select(picker).select_by_visible_text(other)
        picker.find_element(By.XPATH, "./ancestor::tr//button[normalize-space(.)='Correct']"
                            ).click()
        wait_for(lambda n=i + 1: d.request("GET", "/v1/apps/room")[1]["n_feedback"] == n)
    see(browser, "· feedback ·", timeout=120)  # the new version on the curve's list
    history = d.request("GET", "/v1/apps/room/history")[1]
    assert history[-1]["reason"] == "feedback"
    assert console_errors(browser) == []


def test_activate_serves_an_older_version(daemon: DaemonProcess, browser: Any) -> None:
    d = trained(daemon)
    wait_for(lambda: len(d.request("GET", "/v1/apps/room/models")[1]["versions"]) >= 2, 120)
    # a run still in progress would publish its next lazy version over the rollback
    wait_for(lambda: not d.request("GET", "/v1/status")[1]["apps"]["room"]["training"].get(
        "training"), 120, 0.5)
    models = d.request("GET", "/v1/apps/room/models")[1]
    older = min(v["version"] for v in models["versions"])
    browser.get(d.url + "/#/app/room")
    press(browser, f"Activate version {older}", timeout=20)
    see(browser, f"Serving v{older} of room")
    assert d.request("GET", "/v1/apps/room/models")[1]["current"] == older
    assert d.request("GET", "/v1/apps/room/history")[1][-1]["reason"] == "rollback"
    # pin it against retention, and unpin it
    press(browser, f"Pin version {older}")
    see(browser, f"Pinned v{older} of room")
    pinned = d.request("GET", "/v1/apps/room/models")[1]["versions"]
    assert [v["version"] for v in pinned if v["pinned"]] == [older]
    press(browser, f"Unpin version {older}")
    see(browser, f"Unpinned v{older} of room")
    assert not any(v["pinned"] for v in d.request("GET", "/v1/apps/room/models")[1]["versions"])


def test_uploading_a_csv_adds_its_samples(daemon: DaemonProcess, browser: Any,
                                          tmp_path: Path) -> None:
    d = trained(daemon)
    before = d.request("GET", "/v1/apps/room")[1]["n_samples"]
    X, y = blobs(12, seed=5)
    path = tmp_path / "more.csv"
    rows = "".join(f"{x[0]},{x[1]},{t}\n" for x, t in zip(X, y, strict=True))
    path.write_text("a,b,label\n" + rows)
    browser.get(d.url + "/#/app/room")
    labelled(browser, "Labelled file").send_keys(str(path))
    button(browser, "Upload").click()
    see(browser, "Added 12 samples to room")
    assert d.request("GET", "/v1/apps/room")[1]["n_samples"] == before + 12


def test_a_wrong_token_shows_an_error_and_changes_nothing(daemon_factory: Any,
                                                          browser: Any) -> None:
    d = daemon_factory()
    d.write_config(daemon_extra='token = "right-token"')
    d.start()
    browser.get(d.url + "/")
    see(browser, "No apps yet")
    button(browser, "Token").click()
    labelled(browser, "Token").send_keys("wrong-token")
    button(browser, "Save").click()
    see(browser, "New app").click()
    labelled(browser, "Name").send_keys("kitchen")
    button(browser, "Create").click()
    see(browser, "refused this token")
    assert d.request("GET", "/v1/apps")[1] == []
    # with the right one it works
    field = labelled(browser, "Token")
    field.clear()
    field.send_keys("right-token")
    button(browser, "Save").click()
    see(browser, "New app").click()
    labelled(browser, "Name").send_keys("kitchen")
    button(browser, "Create").click()
    wait_for(lambda: d.request("GET", "/v1/apps")[1] == ["kitchen"])


def test_user_typed_text_shows_as_text(daemon: DaemonProcess, browser: Any) -> None:
    evil = "<img src=x onerror=alert(1)>"
    spec = {"data_type": "vector", "classes": [evil, "busy"]}
    assert daemon.request("PUT", "/v1/apps/odd", spec)[0] == 201
    body = {"samples": [{"features": [float(i), 1.0], "label": evil if i % 2 else "busy"}
                        for i in range(12)]}
    assert daemon.request("POST", "/v1/apps/odd/samples", body)[0] == 200
    browser.get(daemon.url + "/#/app/odd")
    see(browser, evil)
    browser.get(daemon.url + "/")
    see(browser, f"{evil}: 6")
    assert browser.find_elements(By.TAG_NAME, "img") == []
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - raises when no alert was opened


def test_the_page_works_under_a_path_prefix(daemon_factory: Any, browser: Any) -> None:
    from browser.proxy import PrefixProxy

    with PrefixProxy("/mliot") as proxy:
        d = daemon_factory()
        d.write_config(daemon_extra=f'public_url = "{proxy.url}/mliot/"')
        proxy.upstream = d.url
        trained(d.start())
        browser.get(f"{proxy.url}/mliot/#/app/room")
        see(browser, "Watching every channel")  # the WebSocket came through the prefix too
        (p,) = d.request("POST", "/v1/apps/room/predict", {"instances": [[6.0, 6.1]]})[1][
            "predictions"]
        labelled(browser, f"Correct label for {p['id']}")
        see(browser, "Versions")
        assert all(path.startswith("/mliot/") for path in proxy.paths), proxy.paths
        try:
            see(browser, "cannot be reached", timeout=1)
            pytest.fail("the page lost the daemon behind the prefix")
        except TimeoutException:
            pass


def test_label_queries_show_their_sample_and_take_an_answer_or_a_skip(
        daemon: DaemonProcess, browser: Any) -> None:
    d = daemon
    teach_doubtful_room(d)  # overlapping clusters, one query a second may open
    browser.get(d.url + "/#/app/room")
    see(browser, "None open")
    points = borderline(200)
    k = 0

    def two_open() -> bool:
        nonlocal k
        if len(d.request("GET", "/v1/apps/room/queries")[1]["queries"]) >= 2:
            return True
        d.request("POST", "/v1/apps/room/predict", {"instances": points[k:k + 4]})
        k = (k + 4) % len(points)
        return False

    wait_for(two_open, 60, 0.5)
    first, second = d.request("GET", "/v1/apps/room/queries")[1]["queries"][:2]
    # the sample (a vector app: its numbers) and the likeliest labels, as a person sees them
    values = labelled(browser, f"Values of query {first['id']}")
    assert values.text.startswith("[2]")
    top = first["candidates"][0]
    answer = button(browser, f"Answer {top['label']} for query {first['id']}")
    assert top["label"] in answer.text and "%" in answer.text
    answer.click()
    wait_for(lambda: d.request("GET", "/v1/apps/room")[1]["n_feedback"] == 1, 10)
    status, body = d.request("POST", "/v1/apps/room/feedback",
                             {"prediction_id": first["prediction_id"], "label": "calm"})
    assert body["duplicate"] and body["label"] == top["label"]  # stored on that prediction
    press(browser, f"Skip query {second['id']}")
    wait_for(lambda: second["id"] not in {
        q["id"] for q in d.request("GET", "/v1/apps/room/queries")[1]["queries"]}, 10)
    assert d.request("GET", "/v1/apps/room")[1]["n_feedback"] == 1  # a skip stores nothing
    WebDriverWait(browser, 10, 0.2, RENDERED).until(
        lambda b: not b.find_elements(By.XPATH, f"//*[@data-query='{first['id']}']")
        and not b.find_elements(By.XPATH, f"//*[@data-query='{second['id']}']"),
        "answered and skipped queries stay on the page")
    assert console_errors(browser) == []
