"""`scorer review` in a real browser: the real command serving a real SQLite database scored by
a real (small, untrained) ensemble through real Spleeter, driven by headless Debian Chromium
with selenium. Open the queue, open a snippet, play it, press a key: the label is in the
database. Raw HTTP requests (no client that could tidy a path) check the refusals.

Skipped, with the reason, where Chromium or chromedriver is not installed (scripts/test
installs them with apt-get where it can).
"""

from __future__ import annotations

import http.client
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from sqlalchemy import select

from bench.fixtures import register_model
from pipeline.frontend import FrontendConfig
from scorer.cli import main
from scorer.db.engine import make_engine, make_sessionmaker
from scorer.db.migrate import upgrade
from scorer.db.models import LabelEvent, Snippet
from scorer.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
CLASSES = ["none", "male", "female", "multi"]
SR = 22_050
SECONDS = {"short.wav": 2.0, "three.wav": 3.0, "long song.wav": 10.0}
BROWSER_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--mute-audio",
    "--autoplay-policy=no-user-gesture-required", "--window-size=1280,900",
]  # fmt: skip
URL_LINE = re.compile(r"review at (http://127\.0\.0\.1:(\d+)/([A-Za-z0-9_-]+)/queue)")


def tone(seconds: float, f0: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    return (0.2 * x + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A data dir with an active 2-member ensemble and three files it scored."""
    root = tmp_path_factory.mktemp("review")
    settings = Settings(data_dir=root / "data", device="cpu", torch_threads=1, preprocess_batch=2)
    engine = make_engine(settings)
    upgrade(engine)
    register_model(engine, settings, "v1", 2, "resnet10", 0, FrontendConfig())
    engine.dispose()
    songs = root / "songs"
    songs.mkdir()
    for i, (name, seconds) in enumerate(SECONDS.items()):
        sf.write(songs / name, tone(seconds, 140 + 60 * i, i), SR)
    result = CliRunner().invoke(main, ["enqueue", str(songs)], obj=settings)
    assert result.exit_code == 0, result.output
    return {"root": root, "settings": settings, "songs": songs}


@pytest.fixture(scope="module")
def server(scored: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """`scorer review` as a user starts it, in its own process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    env.update(SCORER_DATA_DIR=str(scored["settings"].data_dir), SCORER_DEVICE="cpu",
               SCORER_TORCH_THREADS="1")  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "scorer", "review"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        seen = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen.append(line)
            if m := URL_LINE.search(line):
                break
            if not line and proc.poll() is not None:
                pytest.fail("scorer review exited: " + "".join(seen))
        else:
            pytest.fail("scorer review printed no URL: " + "".join(seen))
        yield {**scored, "url": m.group(1), "port": int(m.group(2)), "token": m.group(3)}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def raw_get(port: int, path: str) -> int:
    """The status of a GET of exactly `path`: http.client sends it as written."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_refusals_over_raw_http(server: dict[str, Any]) -> None:
    port, token = server["port"], server["token"]
    assert raw_get(port, f"/{token}/queue") == 200
    assert raw_get(port, "/queue") == 403
    assert raw_get(port, "/etc/passwd") == 403
    assert raw_get(port, f"/../{token}/queue") == 403
    assert raw_get(port, f"/{token}/../../etc/passwd") == 404
    assert raw_get(port, f"/{token}/static/../../../../etc/passwd") == 404
    assert raw_get(port, f"/{token}/static/../app.py") == 404
    assert raw_get(port, f"/{token}/api/snippets/1/original/../../../../../etc/passwd") == 404
    assert raw_get(port, f"/{token}/api/snippets/../../../etc/passwd/original") == 404
    assert raw_get(port, f"/{token}/api/snippets/99999/original") == 404


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(
            "headless Chromium not installed (needs `chromium` and `chromedriver`: "
            "apt-get install chromium chromium-driver; scripts/test does where it can)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in BROWSER_ARGS:
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(180)
    yield driver
    driver.quit()


PLAY = """
const [id, done] = [arguments[0], arguments[arguments.length - 1]];
const audio = document.getElementById(id);
const start = Date.now();
audio.play().then(function check() {
  if (Number.isFinite(audio.duration) && audio.currentTime > 0) done({duration: audio.duration});
  else if (Date.now() - start > 170000) done({error: "timeout", duration: String(audio.duration)});
  else setTimeout(check, 100);
}).catch((e) => done({error: String(e), media: audio.error && audio.error.message}));
"""


PLAYING_FROM = """
const [from, done] = [arguments[0], arguments[arguments.length - 1]];
const audio = document.getElementById("original");
const start = Date.now();
(function check() {
  if (!audio.paused && audio.currentTime >= from) done(audio.currentTime);
  else if (Date.now() - start > 30000) done(-1);
  else setTimeout(check, 50);
})();
"""


def test_open_play_and_label_in_the_browser(server: dict[str, Any], browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver, wait = browser, WebDriverWait(browser, 60)
    driver.get(server["url"])
    rows = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#queue tbody tr"))
    assert len(rows) == len(SECONDS)
    name = rows[0].find_element(By.TAG_NAME, "a").text
    snippet_id = int(rows[0].get_attribute("data-id"))
    rows[0].find_element(By.TAG_NAME, "a").click()
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "yes")
    assert driver.find_element(By.ID, "title").text == name

    played = driver.execute_async_script(PLAY, "original")
    assert "error" not in played, played
    assert math.isclose(played["duration"], SECONDS[name], abs_tol=0.05)
    assert len(driver.find_elements(By.CSS_SELECTOR, "#bars .bar")) == len(CLASSES)
    votes = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#members .vote"))
    assert len(votes) == 2  # the model's two members, computed by the server

    driver.find_element(By.TAG_NAME, "body").send_keys("2")
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-saved"))
    with make_sessionmaker(make_engine(server["settings"]))() as s:
        snippet = s.get(Snippet, snippet_id)
        assert snippet is not None
        assert (snippet.label, snippet.label_origin) == (CLASSES[1], "review")
        assert [e.label for e in s.scalars(select(LabelEvent))] == [CLASSES[1]]

    vocals = driver.execute_async_script(PLAY, "vocals")
    assert "error" not in vocals, vocals
    assert math.isclose(vocals["duration"], SECONDS[name], abs_tol=0.05)
    cached = list((server["settings"].data_dir / "review" / "vocals").glob("*.wav"))
    assert len(cached) == 1 and cached[0].name.startswith(snippet.sha256)

    driver.find_element(By.TAG_NAME, "body").send_keys("n")
    wait.until(lambda d: not d.current_url.split("?")[0].endswith(f"/snippet/{snippet_id}"))
    assert re.search(r"/snippet/\d+", driver.current_url)


def test_the_window_strip_of_a_long_file(server: dict[str, Any], browser: Any) -> None:
    """A 10 s file: four windows, each a button coloured by its verdict; clicking one plays the
    original from that window's start. The page is saved as the README's screenshot when
    REVIEW_SCREENSHOT names a file."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with make_sessionmaker(make_engine(server["settings"]))() as s:
        long_id = s.scalar(select(Snippet.id).where(Snippet.source_path.endswith("long song.wav")))
    base = server["url"].rsplit("/queue", 1)[0]
    driver, wait = browser, WebDriverWait(browser, 60)
    driver.get(f"{base}/snippet/{long_id}")
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "yes")
    windows = driver.find_elements(By.CSS_SELECTOR, "#windows .window")
    assert [w.get_attribute("data-start") for w in windows] == ["0", "3", "6", "9"]
    windows[2].click()
    at = driver.execute_async_script(PLAYING_FROM, 6)
    assert 6.0 <= at < 9.0
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#members .vote"))
    if target := os.environ.get("REVIEW_SCREENSHOT"):
        driver.find_element(By.ID, "original").click()  # pause; a still page
        driver.save_screenshot(target)


def test_the_summary_gives_the_numbers_of_scorer_evaluate(
    scored: dict[str, Any], tmp_path: Path
) -> None:
    """Review every file with a label, then: the summary's accuracy and confusion matrix (from
    the stored verdicts) are those `scorer evaluate` computes again from the features."""
    import csv

    from starlette.testclient import TestClient

    from scorer.evaluation import evaluate_model
    from scorer.review.app import build_app

    settings, songs = scored["settings"], scored["songs"]
    engine = make_engine(settings)
    labels = {name: CLASSES[i % len(CLASSES)] for i, name in enumerate(sorted(SECONDS))}
    with make_sessionmaker(engine)() as s:
        ids = {Path(p).name: i for i, p in s.execute(select(Snippet.id, Snippet.source_path))}
    with TestClient(build_app(settings, engine, "t"), base_url="http://127.0.0.1") as client:
        for name, label in labels.items():
            response = client.post(f"/t/api/snippets/{ids[name]}/label", json={"label": label})
            assert response.status_code == 200
        summary = client.get("/t/api/summary").json()
    table = tmp_path / "reviewed.csv"
    with table.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        w.writerows((str(songs / name), label) for name, label in labels.items())
    report = evaluate_model(settings, engine, labels_csv=table, notify=lambda _: None)
    engine.dispose()

    assert summary["reviewed"] == report["files"] == len(SECONDS)
    assert summary["accuracy"] == pytest.approx(report["accuracy"])
    assert summary["confusion_matrix"] == report["confusion_matrix"]
