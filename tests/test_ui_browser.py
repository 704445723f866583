"""The dashboard in a real browser (headless Chromium through selenium), as a person uses it: the
fleet page shows a prepared root's counts, a mailbox opens, a dead message is requeued through the
page (and has moved on disk), a count changes live after a ``send`` from another process, and a
message whose topic, sender and payload carry script injections runs no script and makes no
request leave (a canary server that must never be hit, and the browser's own network log).

One server (``hybridcomms ui`` as a subprocess) and one browser for the whole module. Skipped where
no browser is installed; failed instead with HYBRIDCOMMS_REQUIRE_BROWSER=1 (``.ci/run``). With
HYBRIDCOMMS_UI_SCREENSHOTS=DIR the three main views are saved there as PNG (docs/ui.md's pictures).
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hybridcomms import FileMailbox, Message, State

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REQUIRE_ENV = "HYBRIDCOMMS_REQUIRE_BROWSER"
SHOTS_ENV = "HYBRIDCOMMS_UI_SCREENSHOTS"


def _no_browser(why: str) -> None:
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{REQUIRE_ENV} is set but {why}")
    pytest.skip(f"no browser for the dashboard test: {why} (apt-get install chromium chromium-driver)")


try:
    from selenium import webdriver
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - the dev extra has it
    webdriver = None


class Canary(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        Canary.hits.append(self.path)
        self.send_response(204)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def canary() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Canary)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def injections(canary: str) -> list[str]:
    return [
        f"<script>window.__pwned=1;fetch('{canary}/script')</script>",
        f"<img src=x onerror=\"window.__pwned=2;fetch('{canary}/onerror')\">",
        f"\"><img src='{canary}/img'>",
        f"javascript:fetch('{canary}/js')",
        f"</pre><svg onload=\"fetch('{canary}/svg')\"></svg>",
        f"<iframe src='{canary}/frame'></iframe>\x1b[2J",
    ]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, canary: str) -> Path:
    root = tmp_path_factory.mktemp("ui-browser") / "mailboxes"
    with FileMailbox(root, "Agent-1", fsync="never") as mb:
        for i in range(5):
            mb.put(Message(topic=f"task.{i}", payload={"n": i}, sender="Captain-THEA"))
        for _ in range(2):
            d = mb.claim()
            assert d is not None
            d.dead("handler gave up: ValueError")
    with FileMailbox(root, "Agent-2", fsync="never") as mb:
        mb.put(Message(topic="status.ping", payload=None, sender="Agent-1"))
    with FileMailbox(root, "Victim", fsync="never") as mb:
        for text in injections(canary):
            mb.put(
                Message(
                    topic="evil", payload={"html": text, text: text}, sender=text[:100], headers={"h": text}
                )
            )
        d = mb.claim()
        assert d is not None
        d.dead(injections(canary)[1])
    return root


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hybridcomms", "--root", str(root), "ui", "--port", "0", "--allow-actions"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the handshake: the address with its token, once it listens
    if "http://" not in line:
        proc.kill()
        pytest.fail(f"hybridcomms ui did not start: {line!r} {proc.communicate(timeout=10)}")
    yield line.strip()
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if webdriver is None:
        _no_browser("selenium is not installed")
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        _no_browser(f"{CHROMIUM} or {CHROMEDRIVER} is missing")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def base(url: str) -> str:
    return url.split("/?", 1)[0]


def cell(driver: Any, agent: str, field: str) -> str:
    text: str = driver.find_element(By.CSS_SELECTOR, f'tr[data-agent="{agent}"] td[data-f="{field}"]').text
    return text


def shoot(driver: Any, name: str) -> None:
    folder = os.environ.get(SHOTS_ENV)
    if folder:
        driver.save_screenshot(str(Path(folder) / name))


def requests_made(driver: Any) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def test_fleet_mailbox_requeue_and_live(browser: Any, server: str, root: Path) -> None:
    browser.get(server)  # the printed address: the token becomes a cookie, and the page loads
    assert browser.current_url == base(server) + "/"
    assert cell(browser, "Agent-1", "waiting") == "3"
    assert cell(browser, "Agent-1", "dead") == "2"
    assert cell(browser, "Agent-2", "waiting") == "1"
    WebDriverWait(browser, 10).until(
        lambda d: d.find_element(By.ID, "live").get_attribute("data-state") == "on"
    )
    shoot(browser, "ui-fleet.png")

    # live: another process sends; the count changes without a reload
    marker = browser.execute_script("window.__same_page = 1; return 1")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "hybridcomms",
            "--root",
            str(root),
            "send",
            "--to",
            "Agent-2",
            "--topic",
            "status.ping",
        ],
        check=True,
        capture_output=True,
    )
    WebDriverWait(browser, 15).until(lambda d: cell(d, "Agent-2", "waiting") == "2")
    assert browser.execute_script("return window.__same_page") == marker  # not reloaded

    # a mailbox, its dead letters, a requeue through the page
    browser.find_element(By.CSS_SELECTOR, 'tr[data-agent="Agent-1"] td a').click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "a.tab[href*='state=dead']"))
    browser.find_element(By.CSS_SELECTOR, "a.tab[href*='state=dead']").click()
    WebDriverWait(browser, 10).until(lambda d: "state=dead" in d.current_url)
    rows = browser.find_elements(By.CSS_SELECTOR, "table.messages td.id a")
    assert len(rows) == 2
    assert "handler gave up" in browser.page_source
    shoot(browser, "ui-mailbox.png")
    moved_id = rows[0].text
    browser.find_elements(By.CSS_SELECTOR, "button.requeue")[0].click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "confirm"))
    assert "Requeue message" in browser.find_element(By.CSS_SELECTOR, "p.confirm").text
    browser.find_element(By.ID, "confirm").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "p.said"))
    assert "1 message(s) requeued to new" in browser.find_element(By.CSS_SELECTOR, "p.said").text
    with FileMailbox(root, "Agent-1", fsync="never") as mb:
        info = mb.get(moved_id)
        assert info is not None and info.state is State.NEW
        assert (root / "Agent-1" / "new" / info.name).is_file()


def test_graph_page_draws(browser: Any, server: str) -> None:
    browser.get(server)
    browser.get(base(server) + "/graph")
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#graph svg g.node"))
    labels = {e.text for e in browser.find_elements(By.CSS_SELECTOR, "#graph svg g.node text")}
    assert {"Captain-THEA", "Agent-1", "Agent-2"} <= labels
    shoot(browser, "ui-graph.png")


def test_injected_scripts_do_not_run(browser: Any, server: str, canary: str, root: Path) -> None:
    browser.get(server)
    browser.get_log("performance")  # drop what came before
    with FileMailbox(root, "Victim", fsync="never") as mb:
        ids = [i.id for s in (State.NEW, State.DEAD) for i in mb.list(s)]
    pages = ["/", "/graph", "/a/Victim?state=new", "/a/Victim?state=dead"] + [f"/a/Victim/m/{i}" for i in ids]
    shown_as_text = []
    for path in pages:
        browser.get(base(server) + path)
        WebDriverWait(browser, 10).until(
            lambda d: d.execute_script("return document.readyState") == "complete"
        )
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018 - no alert may be open
        assert browser.execute_script("return window.__pwned === undefined"), path
        assert not browser.find_elements(
            By.CSS_SELECTOR, "main script, main img, main iframe, main svg[onload]"
        )
        shown_as_text.append("<script>window.__pwned=1" in browser.find_element(By.TAG_NAME, "main").text)
    assert any(shown_as_text)  # the payload is there, as text
    made = requests_made(browser)
    assert all(u.startswith(base(server)) for u in made), [u for u in made if not u.startswith(base(server))]
    assert Canary.hits == []
