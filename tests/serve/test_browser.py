"""The web page in a real headless Chromium (Debian's, driven by Selenium) against a real server."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import PIL.Image
import pytest

from .conftest import PHOTO, Server

webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (the dev extra)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

# the observer records every value the progress bar takes, so a fast job's advance is not missed by polling
RECORD_PROGRESS = """
window.seen = [];
new MutationObserver(() => window.seen.push(document.getElementById('progress').value))
  .observe(document.getElementById('progress'), {attributes: true});
"""


@pytest.fixture(scope="module")
def page_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("page") / "data", token=None)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("the browser test needs Debian's chromium and chromium-driver (apt-get install chromium "
                    "chromium-driver; .ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--autoplay-policy=no-user-gesture-required", "--window-size=1280,1150", "--mute-audio"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def _set(driver: webdriver.Chrome, name: str, value: str) -> None:
    field = driver.find_element(By.ID, f"setting-{name}")
    field.clear()
    field.send_keys(value)


def test_page_upload_progress_play_cancel_history(page_server: Server, browser: webdriver.Chrome,
                                                   tmp_path: Path) -> None:
    wait = WebDriverWait(browser, 60, poll_frequency=0.05)
    browser.get(page_server.url + "/")
    wait.until(lambda d: d.find_elements(By.ID, "setting-num_inference_steps"))
    assert browser.find_element(By.ID, "setting-height").get_attribute("value") == "128"  # the model's default
    browser.find_element(By.ID, "image").send_keys(str(PHOTO))
    for name, value in {"height": "64", "width": "64", "num_frames": "8", "num_inference_steps": "40"}.items():
        _set(browser, name, value)
    browser.execute_script(RECORD_PROGRESS)
    browser.find_element(By.ID, "submit").click()

    wait.until(lambda d: d.find_element(By.ID, "status").text == "succeeded")
    first = browser.find_element(By.ID, "current-id").text
    seen = browser.execute_script("return window.seen")
    assert len(set(seen)) >= 3 and seen == sorted(seen) and seen[-1] == 40, seen  # it advanced, step by step
    video = browser.find_element(By.ID, "result")
    wait.until(lambda d: d.execute_script("return arguments[0].currentTime", video) > 0.2)
    t0 = browser.execute_script("return arguments[0].currentTime", video)
    wait.until(lambda d: d.execute_script("return arguments[0].currentTime", video) != t0)  # it plays
    assert browser.execute_script("return arguments[0].videoWidth", video) == 64
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(tmp_path / "serve_page.png"))
    with PIL.Image.open(tmp_path / "serve_page.png") as shot:
        assert shot.size[0] >= 1000

    _set(browser, "num_inference_steps", "5000")
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.find_element(By.ID, "current-id").text != first)
    second = browser.find_element(By.ID, "current-id").text
    wait.until(lambda d: d.find_element(By.ID, "status").text == "running"
               and float(d.find_element(By.ID, "progress").get_attribute("value")) >= 1)
    browser.find_element(By.ID, "cancel").click()
    wait.until(lambda d: d.find_element(By.ID, "status").text == "cancelled")
    assert page_server.job(second)["step"] < 5000

    browser.refresh()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history .card")) >= 2)
    cards = {c.get_attribute("data-id"): c for c in browser.find_elements(By.CSS_SELECTOR, "#history .card")}
    assert cards[first].get_attribute("data-status") == "succeeded"
    assert cards[second].get_attribute("data-status") == "cancelled"
    assert "num_inference_steps=40" in cards[first].find_element(By.CLASS_NAME, "settings").text
    assert cards[first].find_elements(By.CLASS_NAME, "download")


def test_user_strings_are_shown_as_text_never_html(page_server: Server, browser: webdriver.Chrome) -> None:
    """An error message that echoes the client's own markup is shown as text; no element is made of it."""
    browser.get(page_server.url + "/")
    wait = WebDriverWait(browser, 30, poll_frequency=0.05)
    wait.until(lambda d: d.find_elements(By.ID, "setting-sampler"))
    browser.find_element(By.ID, "image").send_keys(str(PHOTO))
    markup = '<img src=x onerror="window.pwned=1">'
    _set(browser, "sampler", markup)
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: "sampler" in d.find_element(By.ID, "message").text)
    assert markup in browser.find_element(By.ID, "message").text
    assert not browser.find_elements(By.CSS_SELECTOR, "#message img")
    assert browser.execute_script("return window.pwned") is None
