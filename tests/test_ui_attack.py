"""The dashboard against the attacks a co-tenant made on it (docs/ui.md, "How it is secured"):

1. its session cookie must never reach a server of the co-tenant on another port of 127.0.0.1 (a real
   browser logs in, then opens a page of a second server that loads ``/anything`` from itself);
2. connections that send half a request and stop are closed, and the operator's page still answers;
3. hard-linked and big files cannot make a listing hold memory: the head cache is bounded in bytes,
   linked files are not read, dead reasons are read for the rows shown only;
4. agent folders named ``constructor``, ``__proto__``, ``hasOwnProperty``, ``toString`` do not stop
   the fleet page's live updates (a real browser);
5. a payload nested up to 1,100 levels shows, never a 500;
6. made-up senders cannot flood the graph;
7. no redirect after login leaves the dashboard; absurd ages are refused or capped.
"""

from __future__ import annotations

import http.client
import http.server
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from waiting import eventually

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from hybridcomms import FileMailbox, Message, State, _fs
from hybridcomms.ui._app import App, create_app, human_age
from hybridcomms.ui._graph import MAX_NODES, OTHERS, Flow
from hybridcomms.ui._listing import ENTRY_OVERHEAD, FIELD_LIMIT
from hybridcomms.ui._security import Guard
from hybridcomms.ui._source import Source

TOKEN = "attack-test-token-0123456789"
ORIGIN = "http://127.0.0.1:8765"
P = Guard(TOKEN).prefix
HOSTILE_NAMES = ("constructor", "__proto__", "hasOwnProperty", "toString")


def client(root: Path, *, actions: bool = False) -> tuple[TestClient, App]:
    app, state = create_app(Source(str(root)), Guard(TOKEN, allow_actions=actions), live=False)
    c = TestClient(app, base_url=ORIGIN + P)
    assert c.get(f"/?token={TOKEN}", follow_redirects=False).status_code == 303
    return c, state


# -- 7. redirects and ages --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tail=st.text(alphabet="/\\:@.?#%abcdevilxmpl", max_size=30))
@example(tail="//evil.example/x")
@example(tail="/\\evil.example/x")
@example(tail="\\\\evil.example")
@example(tail="/https://evil.example")
def test_login_redirects_only_to_a_local_path(tmp_path: Path, tail: str) -> None:
    app, _ = create_app(Source(str(tmp_path)), Guard(TOKEN), live=False)
    c = TestClient(app, base_url=ORIGIN)
    for path in (f"/{tail}", f"{P}/{tail}"):
        r = c.get(path, params={"token": TOKEN}, follow_redirects=False)
        location = r.headers.get("location")
        if location is None:
            assert r.status_code in (404, 421), (path, r.status_code)
            continue
        parts = urlsplit(location)
        assert not parts.scheme and not parts.netloc, location
        assert location.startswith(P + "/") and not location.startswith(P + "//"), location
        assert "\\" not in parts.path, location


def test_absurd_ages_are_capped_or_refused(tmp_path: Path) -> None:
    assert len(human_age(1e308)) < 20 and len(human_age(1e20)) < 20
    with FileMailbox(tmp_path, "Agent-1", fsync="never") as mb:
        mb.put(Message(topic="t", payload=1))
    c, _ = client(tmp_path, actions=True)
    csrf = Guard(TOKEN).csrf
    for older in ("1e308", "1e30", "inf", "nan", "-1"):
        r = c.post(
            "/a/Agent-1/purge",
            data={"csrf": csrf, "state": "done", "older_than": older},
            headers={"origin": ORIGIN},
        )
        assert r.status_code == 400, older
        assert not re.search(r"\d{30}", r.text)  # no 300-digit number anywhere


# -- 5. deep payloads -------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(depth=st.integers(min_value=1, max_value=1100))
@example(depth=254)
@example(depth=255)
@example(depth=300)
@example(depth=1023)
@example(depth=1100)
def test_a_deeply_nested_payload_shows(tmp_path_factory: pytest.TempPathFactory, depth: int) -> None:
    root = tmp_path_factory.mktemp("deep")
    with FileMailbox(root, "Agent-1", fsync="never") as mb:
        mb.put(Message(topic="deep", payload=0))
        (info,) = mb.list(State.NEW)
    wire = orjson.loads((root / "Agent-1" / "new" / info.name).read_bytes())
    raw = orjson.dumps(wire).replace(b'"payload":0', b'"payload":' + b"[" * depth + b"]" * depth)
    (root / "Agent-1" / "new" / info.name).write_bytes(raw)
    c, _ = client(root)
    r = c.get(f"/a/Agent-1/m/{info.id}")
    assert r.status_code == 200, (depth, r.status_code)
    if 64 < depth < 1000:  # deeper than the reader takes (1,024 levels in all): "cannot be read"
        assert "nests deeper than 64 levels" in r.text


# -- 6. the graph -----------------------------------------------------------------------------------


def test_made_up_senders_do_not_flood_the_graph(tmp_path: Path) -> None:
    for agent in ("Agent-1", "Agent-2"):
        FileMailbox(tmp_path, agent, fsync="never").close()
    c, state = client(tmp_path)
    now = time.time()
    state.flows.note(Flow(now, "Agent-2", "Agent-1", "durable"))
    for i in range(3000):
        state.flows.note(Flow(now, f"Forged-{i}", "Agent-1", "durable"))
    graph = c.get("/api/graph").json()
    assert len(graph["nodes"]) <= MAX_NODES
    by_id = {n["id"]: n for n in graph["nodes"]}
    assert by_id["Agent-1"]["verified"] is True
    assert by_id[OTHERS]["others"] > 2900
    assert all(not n["verified"] for i, n in by_id.items() if i.startswith("Forged-"))
    total = sum(e["count"] for e in graph["edges"])
    assert total == 3001  # nothing lost: merged


# -- 3. memory under hard links and big files -------------------------------------------------------


def _linked_layout(root: Path, agent: str, names: int, field: int, distinct: int) -> None:
    """One message file with ``field``-character topic and sender, hard-linked under ``names`` valid
    names in new/; and ``distinct`` single-link files with such fields."""
    with FileMailbox(root, agent, fsync="never") as mb:
        mb.put(Message(topic="t" * min(field, 256), payload="p" * field, sender="s" * field))
        for _ in range(distinct):
            mb.put(Message(topic="u" * min(field, 256), payload=2, sender="v" * field))
        first = mb.list(State.NEW)[0]
    new = root / agent / "new"
    for i in range(names):
        os.link(new / first.name, new / f"2M.20261204T100000000000Z.{i:032x}.a1.json")


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    names=st.integers(min_value=20, max_value=300),
    field=st.integers(min_value=1, max_value=60_000),
    distinct=st.integers(min_value=0, max_value=60),
)
def test_listing_memory_is_bounded_by_bytes(
    tmp_path_factory: pytest.TempPathFactory, names: int, field: int, distinct: int
) -> None:
    root = tmp_path_factory.mktemp("links")
    _linked_layout(root, "Agent-1", names, field, distinct)
    c, state = client(root)
    state.heads.budget = 64 * 1024
    r = c.get("/a/Agent-1?state=new&topic=nothing-matches*")
    assert r.status_code == 200
    per_entry = ENTRY_OVERHEAD + 4 * (5 * FIELD_LIMIT + 3 * 128)
    assert state.heads.bytes <= state.heads.budget
    assert state.heads.bytes <= len(state.heads) * per_entry
    page = c.get("/a/Agent-1?state=new").text
    assert "hard-linked" in page  # the linked file is shown as such, not read
    assert "t" * (FIELD_LIMIT + 1) not in page and "v" * (FIELD_LIMIT + 1) not in page


def test_the_dead_page_reads_the_reasons_of_its_rows_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FileMailbox(tmp_path, "Agent-1", fsync="never") as mb:
        mb.put_many([Message(topic=f"t.{i}", payload=i) for i in range(120)])
        while (d := mb.claim()) is not None:
            d.dead("gave up")
        dead = mb.list(State.DEAD)
    folder = tmp_path / "Agent-1" / "dead"
    big = tmp_path / "big.reason"
    big.write_bytes(orjson.dumps({"reason": "x" * 30_000}))
    for info in dead:
        (folder / (info.name + ".reason.json")).unlink()
        os.link(big, folder / (info.name + ".reason.json"))
    opened: list[str] = []
    real = _fs.open_regular

    def counting(name: Any, limit: int, **kw: Any) -> Any:
        opened.append(os.fspath(name))
        return real(name, limit, **kw)

    monkeypatch.setattr(_fs, "open_regular", counting)
    c, _ = client(tmp_path)
    r = c.get("/a/Agent-1?state=dead")
    assert r.status_code == 200 and "hard-linked" in r.text
    assert "x" * 1000 not in r.text
    assert len([n for n in opened if n.endswith(".reason.json")]) <= 50


# -- 2. slow connections ----------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    with FileMailbox(tmp_path, "Agent-1", fsync="never") as mb:
        mb.put(Message(topic="t", payload=1))
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "hybridcomms", "--root", str(tmp_path), "ui", "--port", "0", "--no-bus"),
            *("--request-timeout", "1.5", "--max-connections", "40"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the handshake: the address, once it listens
    if "http://" not in line:
        proc.kill()
        pytest.fail(f"hybridcomms ui did not start: {line!r} {proc.communicate(timeout=10)}")
    yield line.strip()
    proc.terminate()
    proc.wait(timeout=10)


def _operator_gets(url: str) -> int:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    conn.request("GET", f"{parts.path}?{parts.query}")
    r = conn.getresponse()
    cookie = r.getheader("set-cookie", "").split(";")[0]
    r.read()
    conn.request("GET", parts.path, headers={"cookie": cookie})
    page = conn.getresponse()
    page.read()
    conn.close()
    return page.status


@pytest.mark.timeout(60)
def test_slow_connections_are_closed_and_the_operator_is_served(served: str) -> None:
    parts = urlsplit(served)
    slow = []
    for _ in range(100):  # past the cap of 40
        s = socket.create_connection((parts.hostname, parts.port), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # half a request, then nothing
        slow.append(s)
    start = time.monotonic()
    assert _operator_gets(served) == 200  # served during the attack
    assert time.monotonic() - start < 3
    deadline = time.monotonic() + 8
    for s in slow:  # every slow connection is closed by the server (cap, then deadline)
        s.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            assert s.recv(1024) == b""
        except ConnectionResetError:
            pass
        s.close()
    assert time.monotonic() - start < 8


def _operator_gets_or_none(url: str) -> int | None:
    try:
        return _operator_gets(url)
    except (ConnectionError, http.client.HTTPException, TimeoutError):
        return None


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_connections_that_never_read_their_replies_are_closed_and_the_operator_is_served(served: str) -> None:
    """Complete requests, pipelined, whose answers are never read (the second co-tenant round: the
    server's writes pause, the connection was never timed out nor evicted and the cap filled up)."""
    parts = urlsplit(served)
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    stalled = []
    for _ in range(50):  # past the cap of 40
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 88)  # small segments: little is buffered
        s.settimeout(5)
        try:
            s.connect((parts.hostname, parts.port))
            s.setblocking(False)
            try:
                for _ in range(2_000):
                    s.send(request)
            except (BlockingIOError, OSError):
                pass  # its own buffers are full: enough asked
        except OSError:
            pass  # refused or reset at once: the cap at work
        stalled.append(s)
    # Served while they stall: a connection the cap refuses (while every other is still being
    # answered, none is yet to close first) costs the operator a retry, as docs/ui.md says.
    status = eventually(lambda: _operator_gets_or_none(served), "the operator's page", 6)
    assert status == 200
    # Each is closed 1.5 s after its replies stopped being taken, once the server got to it: 50
    # connections with pipelined requests took over 10 s on a machine loaded five times over.
    deadline = time.monotonic() + 30
    for s in stalled:  # the server closes each (evicted, or its replies not taken in time)
        s.setblocking(True)
        closed = False
        while not closed and time.monotonic() < deadline:
            s.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                closed = s.recv(65536) == b""
            except (ConnectionResetError, BrokenPipeError):
                closed = True
            except OSError:
                break
        assert closed, "a connection that never read its replies is still open"
        s.close()


# -- 1 and 4, in a real browser ---------------------------------------------------------------------

try:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - the dev extra has it
    webdriver = None

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


class CoTenant(http.server.BaseHTTPRequestHandler):
    """The co-tenant's server on another port: a page that loads ``/anything`` from itself; it notes
    every request's path and headers."""

    seen: list[tuple[str, str]] = []

    def do_GET(self) -> None:
        CoTenant.seen.append((self.path, str(self.headers)))
        if self.path.startswith("/page"):
            body = b'<!doctype html><img src="/anything"><img src="/x"><img src="/s/guess/">'
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def cotenant() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CoTenant)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ui-attack") / "mailboxes"
    with FileMailbox(root, "Agent-2", fsync="never") as mb:
        mb.put(Message(topic="status.ping", payload=None))
    for name in HOSTILE_NAMES:
        (root / name / "new").mkdir(parents=True)  # "__proto__" is no agent id: a broken row
    return root


@pytest.fixture(scope="module")
def server(hostile_root: Path) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hybridcomms", "--root", str(hostile_root), "ui", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        pytest.fail(f"hybridcomms ui did not start: {line!r} {proc.communicate(timeout=10)}")
    yield line.strip()
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if webdriver is None or not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("HYBRIDCOMMS_REQUIRE_BROWSER"):
            pytest.fail("HYBRIDCOMMS_REQUIRE_BROWSER is set but no browser is installed")
        pytest.skip("no browser (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def test_the_cookie_never_reaches_another_port(browser: Any, server: str, cotenant: str) -> None:
    token = server.rsplit("token=", 1)[1]
    browser.get(server)  # logged in: the cookie is set
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "fleet"))
    assert "token=" not in browser.current_url
    CoTenant.seen.clear()
    browser.get(f"{cotenant}/page")  # the operator follows the co-tenant's link
    WebDriverWait(browser, 10).until(lambda d: any(p == "/anything" for p, _ in CoTenant.seen))
    WebDriverWait(browser, 10).until(lambda d: d.execute_script("return document.readyState") == "complete")
    session = Guard(token).session
    for path, headers in CoTenant.seen:
        assert "hybridcomms_ui" not in headers, (path, headers)
        assert token not in headers + path and session not in headers + path
        assert Guard(token).prefix not in headers + path


def test_hostile_folder_names_do_not_stop_live_updates(browser: Any, server: str, hostile_root: Path) -> None:
    browser.get(server)
    WebDriverWait(browser, 10).until(
        lambda d: d.find_element(By.ID, "live").get_attribute("data-state") == "on"
    )
    assert browser.find_elements(By.CSS_SELECTOR, 'tr[data-agent="constructor"]')

    def waiting(d: Any) -> str:
        text: str = d.find_element(By.CSS_SELECTOR, 'tr[data-agent="Agent-2"] td[data-f="waiting"]').text
        return text

    assert waiting(browser) == "1"
    subprocess.run(
        [
            *(sys.executable, "-m", "hybridcomms", "--root", str(hostile_root), "send"),
            *("--to", "Agent-2", "--topic", "status.ping"),
        ],
        check=True,
        capture_output=True,
    )
    WebDriverWait(browser, 15).until(lambda d: waiting(d) == "2")
    assert browser.find_element(By.ID, "live").get_attribute("data-state") == "on"
