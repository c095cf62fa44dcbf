"""The page in a real headless Chromium against a real `qcsfer serve` process on 127.0.0.1.

Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them) and Selenium. Outside
CI the tests skip when the browser is missing; under CI (CI=true) that is a failure. Screenshots
go to artefacts/browser/ (git-ignored; QCSFER_ARTEFACTS moves them) for people to look at.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # a real Chromium and a server process

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "src" / "qcsfer" / "assets"
ARTEFACTS = Path(os.environ.get("QCSFER_ARTEFACTS", REPO / "artefacts" / "browser"))
IN_CI = os.environ.get("CI", "").lower() == "true"
TIMEOUT = 180  # seconds for anything the page waits on (the CPU may be shared)


def need(what: str) -> None:
    message = f"browser tests need {what}"
    if IN_CI:
        pytest.fail(message + " (CI must install it: see .ci/run)")
    pytest.skip(message)


try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - depends on the machine
    webdriver = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_y4m(photo: Path, path: Path, frames: int = 3) -> Path:
    """A short 640x480 YUV4MPEG2 clip of `photo`, for Chromium's fake camera."""
    canvas = Image.new("RGB", (640, 480), (90, 90, 90))
    face = Image.open(photo).convert("RGB")
    face.thumbnail((480, 480))
    canvas.paste(face, ((640 - face.width) // 2, (480 - face.height) // 2))
    y, u, v = canvas.convert("YCbCr").split()
    planes = [np.asarray(y), np.asarray(u.resize((320, 240))), np.asarray(v.resize((320, 240)))]
    frame = b"FRAME\n" + b"".join(p.astype(np.uint8).tobytes() for p in planes)
    path.write_bytes(b"YUV4MPEG2 W640 H480 F10:1 Ip A1:1 C420jpeg\n" + frame * frames)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`qcsfer serve` in its own process; its URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), *sys.path])}
    command = [sys.executable, "-m", "qcsfer", "serve", "--port", str(port), "--host", "127.0.0.1"]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"qcsfer serve did not become ready:\n{log.read_text()}")
        time.sleep(0.5)
    yield url
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    if webdriver is None:
        need("selenium (pip install -e '.[dev]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        need("chromium and chromedriver (apt-get install chromium chromium-driver)")
    camera = write_y4m(ASSETS / "astronaut.jpg", tmp_path_factory.mktemp("camera") / "face.y4m")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={camera}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(TIMEOUT)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def wait(driver: webdriver.Chrome, condition, what: str):
    try:
        return WebDriverWait(driver, TIMEOUT, poll_frequency=0.2).until(lambda d: condition(d))
    except TimeoutException:
        driver.save_screenshot(str(ARTEFACTS / "failure.png"))
        status = driver.find_element(By.ID, "status").text
        pytest.fail(f"page never showed {what} (status line: {status!r})")


def upload(driver: webdriver.Chrome, server: str, *names: str) -> None:
    driver.get(server + "/")
    wait(driver, lambda d: "classes" in d.find_element(By.ID, "model-info").text, "the model")
    paths = "\n".join(str(ASSETS / name) for name in names)
    driver.find_element(By.ID, "file-input").send_keys(paths)
    wait(driver, lambda d: d.find_element(By.ID, "status").text.startswith("Done"), "the results")


def test_upload_astronaut_shows_one_happy_face(browser, server) -> None:
    upload(browser, server, "astronaut.jpg")
    figure = browser.find_element(By.CSS_SELECTOR, 'figure[data-file="astronaut.jpg"]')
    labels = [e.text for e in figure.find_elements(By.CLASS_NAME, "face-label")]
    assert labels == ["happiness"]
    assert "1 face (happiness)" in figure.find_element(By.TAG_NAME, "figcaption").text
    canvas = figure.find_element(By.TAG_NAME, "canvas")
    assert (canvas.get_property("width"), canvas.get_property("height")) == (512, 512)
    bars = figure.find_elements(By.CSS_SELECTOR, ".bars [role=listitem]")
    assert len(bars) == 8 and bars[0].get_attribute("aria-label").startswith("happiness")
    browser.save_screenshot(str(ARTEFACTS / "upload-astronaut.png"))
    browser.find_element(By.ID, "view-toggle").click()
    assert browser.find_element(By.ID, "table-view").is_displayed()
    assert not browser.find_element(By.ID, "results").is_displayed()
    rows = browser.find_elements(By.CSS_SELECTOR, "#table-view tbody tr")
    assert len(rows) == 1 and "happiness" in rows[0].text
    assert browser.find_element(By.ID, "download-csv").is_enabled()
    browser.save_screenshot(str(ARTEFACTS / "upload-astronaut-table.png"))


def test_upload_coffee_says_no_face(browser, server) -> None:
    upload(browser, server, "coffee.jpg")
    figure = browser.find_element(By.CSS_SELECTOR, 'figure[data-file="coffee.jpg"]')
    assert "no face" in figure.find_element(By.TAG_NAME, "figcaption").text
    assert figure.find_elements(By.CLASS_NAME, "face-label") == []
    browser.save_screenshot(str(ARTEFACTS / "upload-coffee.png"))


def test_webcam_shows_live_labels(browser, server) -> None:
    browser.get(server + "/")
    browser.execute_script(  # record the URLs the page asks, to see which detector it names
        "window.asked = []; const fetched = window.fetch;"
        "window.fetch = (url, options) => { window.asked.push(String(url));"
        " return fetched(url, options); };"
    )
    browser.find_element(By.ID, "tab-webcam").click()
    browser.find_element(By.ID, "cam-start").click()

    def live_happiness(driver):
        # One read in the page: the labels are redrawn every frame, so element handles go stale.
        labels = driver.execute_script(
            "return [...document.querySelectorAll('.live-label')].map(e => e.textContent.trim())"
        )
        return labels if any(t.startswith("happiness") for t in labels) else False

    wait(browser, live_happiness, "a live label")
    wait(browser, lambda d: d.find_element(By.ID, "fps").text != "–", "the frame rate")
    assert int(browser.find_element(By.ID, "latency").text) > 0
    assert float(browser.find_element(By.ID, "fps").text) > 0
    asked = [u for u in browser.execute_script("return window.asked") if "/v1/predict" in u]
    assert asked and all("detector=blazeface-back" in u for u in asked)  # the fast path
    browser.save_screenshot(str(ARTEFACTS / "webcam-live.png"))
    browser.find_element(By.ID, "cam-stop").click()
    assert "Camera off" in browser.find_element(By.ID, "cam-message").text
    assert browser.find_element(By.ID, "cam-start").is_enabled()


def test_webcam_refused_gives_a_clear_message(browser, server) -> None:
    browser.get(server + "/")
    browser.execute_script(
        "navigator.mediaDevices.getUserMedia = () => "
        "Promise.reject(new DOMException('denied', 'NotAllowedError'));"
    )
    browser.find_element(By.ID, "tab-webcam").click()
    browser.find_element(By.ID, "cam-start").click()
    wait(browser, lambda d: "No webcam" in d.find_element(By.ID, "cam-message").text, "a message")
    assert "permission" in browser.find_element(By.ID, "cam-message").text
    browser.save_screenshot(str(ARTEFACTS / "webcam-refused.png"))


def test_keyboard_and_narrow_window(browser, server) -> None:
    browser.get(server + "/")
    photos = browser.find_element(By.ID, "tab-photos")
    photos.send_keys(Keys.ARROW_RIGHT)
    assert browser.find_element(By.ID, "panel-webcam").is_displayed()
    assert browser.switch_to.active_element.get_attribute("id") == "tab-webcam"
    browser.switch_to.active_element.send_keys(Keys.ARROW_LEFT)
    assert browser.find_element(By.ID, "panel-photos").is_displayed()
    unlabelled = browser.execute_script(
        "return [...document.querySelectorAll('input, select')]"
        ".filter(e => !e.labels || !e.labels.length).map(e => e.id);"
    )
    assert unlabelled == []
    browser.set_window_size(390, 844)  # a phone
    try:
        upload(browser, server, "astronaut.jpg", "coffee.jpg")
        browser.save_screenshot(str(ARTEFACTS / "narrow-window.png"))
        too_wide = browser.execute_script(
            "const width = document.documentElement.clientWidth;"
            "return [...document.querySelectorAll('body *')]"
            ".filter(e => e.getBoundingClientRect().right > width + 0.5)"
            ".map(e => e.tagName + '#' + e.id + '.' + e.className);"
        )
        assert too_wide == []  # nothing sticks out sideways: no horizontal scrolling
    finally:
        browser.set_window_size(1280, 1000)
