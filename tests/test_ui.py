"""The dashboard over HTTP (Starlette's TestClient, no server, no browser): its pages on a prepared
root, its guard (token, Host, CSRF, read-only by default), paging, ids that try to be paths, and
hostile text from producers rendered as text."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("jinja2")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from hybridcomms import FileMailbox, Message, State
from hybridcomms.backends.base import MessageInfo
from hybridcomms.ui import _listing
from hybridcomms.ui._app import create_app
from hybridcomms.ui._listing import lookup_key
from hybridcomms.ui._security import Guard
from hybridcomms.ui._source import Source

TOKEN = "test-token-0123456789"
BASE = "http://127.0.0.1:8765"
#: The secret path prefix every page lives under (derived from the token).
P = Guard(TOKEN).prefix
HOSTILE = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "javascript:alert(1)",
    "\x1b[2J\x1b[31mALL HEALTHY",
    "\u202egnp.exe",
    "</pre><svg onload=alert(1)>",
]


def client_for(source: Source, *, actions: bool = False, login: bool = True) -> TestClient:
    app, _ = create_app(source, Guard(TOKEN, allow_actions=actions), live=False)
    client = TestClient(app, base_url=BASE + P)
    if login:
        r = client.get(f"/?token={TOKEN}", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == P + "/"
    return client


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "mailboxes"
    with FileMailbox(r, "Agent-1", fsync="never") as mb:
        for i in range(7):
            mb.put(Message(topic=f"task.{i}", payload={"n": i}, sender="Captain-THEA"))
        d = mb.claim()
        assert d is not None
        d.dead("handler gave up")
    with FileMailbox(r, "Agent-2", fsync="never") as mb:
        mb.put(Message(topic="status.ping", payload=None, sender="Agent-1"))
    return r


def dead_ids(root: Path, agent: str) -> list[str]:
    with FileMailbox(root, agent, fsync="never") as mb:
        return [i.id for i in mb.list(State.DEAD) if i.id]


# -- the pages --------------------------------------------------------------------------------------


def test_fleet_page_counts_and_sorts_by_attention(root: Path) -> None:
    c = client_for(Source(str(root)))
    r = c.get("/")
    assert r.status_code == 200
    rows = re.findall(r'<tr data-agent="([^"]+)"', r.text)
    assert rows == ["Agent-1", "Agent-2"]  # Agent-1 has a dead letter: first
    agent1 = r.text.split('data-agent="Agent-1"')[1].split("</tr>")[0]
    assert '<td data-f="waiting">6</td>' in agent1
    assert f'<a href="{P}/a/Agent-1?state=dead">1</a>' in agent1


def test_fleet_shows_legacy_and_broken_agents(root: Path) -> None:
    legacy = root / "Old-Agent"
    legacy.mkdir()
    (legacy / "inbox.json").write_text('[{"type": "x", "body": {}}]')
    (root / "Half").mkdir()
    (root / "Half" / "dead").mkdir()
    r = client_for(Source(str(root))).get("/")
    assert 'class="legacy"' in r.text and "legacy Dream.OS layout" in r.text and "1 waiting" in r.text
    assert 'class="broken"' in r.text and "but no new/" in r.text


def test_mailbox_page_lists_by_state_with_topics_and_reasons(root: Path) -> None:
    c = client_for(Source(str(root)))
    r = c.get("/a/Agent-1?state=dead")
    assert r.status_code == 200
    assert "handler gave up" in r.text and "Captain-THEA" in r.text and "task." in r.text
    r = c.get("/a/Agent-1?state=new&topic=task.[3-4]")
    assert r.text.count('class="id"') == 2


def test_paging(root: Path) -> None:
    with FileMailbox(root, "Many", fsync="never") as mb:
        mb.put_many([Message(topic=f"bulk.{i}", payload=i) for i in range(120)])
    c = client_for(Source(str(root)))
    seen: list[str] = []
    for page in (1, 2, 3):
        r = c.get(f"/a/Many?state=new&page={page}")
        ids = re.findall(rf'class="id"><a href="{P}/a/Many/m/([^"]+)"', r.text)
        seen += ids
        assert f"page {page} of 3" in r.text
    assert len(seen) == 120 and len(set(seen)) == 120
    assert 'rel="next"' not in c.get("/a/Many?state=new&page=3").text
    assert "no messages in new" in c.get("/a/Many?state=new&page=9").text
    assert c.get("/a/Many?state=new&page=x").status_code == 400
    assert c.get("/a/Many?state=tmp").status_code == 400


def test_listing_reads_no_body_beyond_the_page(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FileMailbox(root, "Many", fsync="never") as mb:
        mb.put_many([Message(topic=f"bulk.{i}", payload=i) for i in range(300)])
    reads: list[str] = []
    real = _listing.read_small

    def counting(mb: FileMailbox, info: MessageInfo, limit: int) -> Message:
        reads.append(info.name)
        return real(mb, info, limit)

    monkeypatch.setattr(_listing, "read_small", counting)
    client_for(Source(str(root))).get("/a/Many?state=new&page=2")
    assert len(reads) == 50


def test_message_page(root: Path) -> None:
    c = client_for(Source(str(root)))
    (msg_id,) = dead_ids(root, "Agent-1")
    r = c.get(f"/a/Agent-1/m/{msg_id}")
    assert r.status_code == 200
    assert "handler gave up" in r.text and str(root / "Agent-1" / "dead") in r.text
    assert "&#34;n&#34;: 0" in r.text or "&quot;n&quot;: 0" in r.text or '"n": 0' in r.text


def test_a_file_not_named_by_hybridcomms_is_reachable_by_its_key(root: Path) -> None:
    weird = "drop-\udcff-\x1b[2J.json"
    fd = os.open(root / "Agent-2" / "new" / weird, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b'{"topic": "<b>t</b>", "payload": 1}')
    os.close(fd)
    c = client_for(Source(str(root)))
    r = c.get("/a/Agent-2?state=new")
    assert r.status_code == 200
    assert "\\xff" in r.text and "\\x1b[2J" in r.text and "\x1b" not in r.text
    (key,) = [k for k in re.findall(rf'href="{P}/a/Agent-2/m/([^"]+)"', r.text) if k.startswith("~")]
    r = c.get(f"/a/Agent-2/m/{key}")
    assert r.status_code == 200 and "&lt;b&gt;t&lt;/b&gt;" in r.text


# -- the guard --------------------------------------------------------------------------------------


def test_every_page_needs_the_token(root: Path) -> None:
    c = client_for(Source(str(root)), login=False)
    for path in ("/", "/graph", "/a/Agent-1", "/api/fleet", "/api/graph", "/events"):
        assert c.get(path).status_code == 403, path
    assert c.get("/?token=wrong").status_code == 403
    assert c.get("/static/ui.css").status_code == 200
    r = c.get(f"/a/Agent-1?state=dead&token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"{P}/a/Agent-1?state=dead"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and f"path={P}/".lower() in cookie
    assert TOKEN.lower() not in cookie  # the cookie holds a derived value, not the token


def test_host_header_is_checked(root: Path) -> None:
    c = client_for(Source(str(root)))
    assert c.get("/", headers={"host": "evil.example:8765"}).status_code == 421
    assert c.get("/", headers={"host": "127.0.0.1.evil.example"}).status_code == 421
    assert c.get("/", headers={"host": "localhost:8765"}).status_code == 200
    assert c.get("/", headers={"host": "[::1]:8765"}).status_code == 200


def test_security_headers(root: Path) -> None:
    r = client_for(Source(str(root))).get("/")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in r.text.replace(f'<script src="{P}/static/ui.js" defer></script>', "")
    assert not re.search(r"<[^>]+\son[a-z]+=", r.text)  # no inline event handler anywhere


def test_read_only_by_default(root: Path) -> None:
    c = client_for(Source(str(root)))
    (msg_id,) = dead_ids(root, "Agent-1")
    page = c.get("/a/Agent-1?state=dead").text
    assert 'method="post"' not in page and "read-only" in page
    csrf = Guard(TOKEN).csrf
    r = c.post("/a/Agent-1/requeue", data={"csrf": csrf, "key": msg_id, "confirm": "yes"})
    assert r.status_code == 403 and "read-only" in r.text
    assert dead_ids(root, "Agent-1") == [msg_id]
    assert c.get("/a/Agent-1/requeue").status_code == 405


def test_requeue_needs_csrf_same_origin_and_confirmation(root: Path) -> None:
    c = client_for(Source(str(root)), actions=True)
    (msg_id,) = dead_ids(root, "Agent-1")
    csrf = Guard(TOKEN).csrf
    form = {"csrf": csrf, "key": msg_id}
    assert c.post("/a/Agent-1/requeue", data={**form, "csrf": "x", "confirm": "yes"}).status_code == 403
    cross = {"origin": "http://evil.example", "sec-fetch-site": "cross-site"}
    assert c.post("/a/Agent-1/requeue", data={**form, "confirm": "yes"}, headers=cross).status_code == 403
    anon = client_for(Source(str(root)), actions=True, login=False)
    assert anon.post("/a/Agent-1/requeue", data={**form, "confirm": "yes"}).status_code == 403
    r = c.post("/a/Agent-1/requeue", data=form, headers={"origin": BASE})
    assert r.status_code == 200 and 'name="confirm" value="yes"' in r.text
    assert dead_ids(root, "Agent-1") == [msg_id]  # asked, not done
    r = c.post("/a/Agent-1/requeue", data={**form, "confirm": "yes"}, headers={"origin": BASE})
    assert r.status_code == 200 and "1 message(s) requeued" in r.text
    assert dead_ids(root, "Agent-1") == []
    with FileMailbox(root, "Agent-1", fsync="never") as mb:
        info = mb.get(msg_id)
        assert info is not None and info.state is State.NEW


def test_requeue_all_dead_and_purge(root: Path) -> None:
    c = client_for(Source(str(root)), actions=True)
    csrf = Guard(TOKEN).csrf
    r = c.post("/a/Agent-1/requeue-dead", data={"csrf": csrf, "confirm": "yes"})
    assert "1 dead message(s) requeued" in r.text
    with FileMailbox(root, "Agent-1", fsync="never") as mb:
        d = mb.claim()
        assert d is not None
        d.dead("again")
    r = c.post("/a/Agent-1/purge", data={"csrf": csrf, "state": "dead", "older_than": "0", "confirm": "yes"})
    assert "1 message(s) deleted from dead" in r.text
    assert dead_ids(root, "Agent-1") == []
    bad = {"csrf": csrf, "state": "new", "older_than": "0", "confirm": "yes"}
    assert c.post("/a/Agent-1/purge", data=bad).status_code == 400
    assert c.post("/a/Agent-1/purge", data={**bad, "state": "done", "older_than": "nan"}).status_code == 400


@pytest.mark.parametrize(
    "path",
    [
        "/a/..%2f..%2fetc/m/passwd",
        "/a/%2e%2e/m/x",
        "/a/Agent-1/m/..%2f..%2f..%2fetc%2fpasswd",
        "/a/Agent-1/m/%2e%2e",
        "/a/Agent-1/m/~Li4vLi4vZXRjL3Bhc3N3ZA==",  # "../../etc/passwd" as a name key
        "/a/Agent-1/m/~Li4=",  # ".."
        "/a/.hidden",
    ],
)
def test_ids_never_become_paths(root: Path, path: str) -> None:
    r = client_for(Source(str(root))).get(path)
    assert r.status_code == 404
    assert "root:" not in r.text


def test_lookup_key_refuses_what_cannot_be_a_name() -> None:
    assert lookup_key("../x") is None
    assert lookup_key("~Li4vLi4vZXRjL3Bhc3N3ZA==") is None
    assert lookup_key("abc-123") == "abc-123"


# -- hostile producers ------------------------------------------------------------------------------


def put_hostile(root: Path, text: str) -> str:
    with FileMailbox(root, "Victim", fsync="never") as mb:
        m = Message(
            topic="ok",
            payload={"html": text, text: [text]},
            sender=text,
            headers={"h": text},
        )
        mb.put(m)
        d = mb.claim()
        assert d is not None
        d.dead(text)
        return m.id


def assert_inert(html: str, text: str) -> None:
    for bad in ("<script>alert", "<img src=x", "<svg onload", "\x1b", "\u202e"):
        assert bad not in html
    assert not re.search(r"<[^>]+\son[a-z]+\s*=", html), "an event handler attribute got through"
    assert 'href="javascript:' not in html.lower()


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_renders_as_text(root: Path, text: str) -> None:
    msg_id = put_hostile(root, text)
    c = client_for(Source(str(root)))
    for path in ("/", "/a/Victim?state=dead", f"/a/Victim/m/{msg_id}", "/api/fleet"):
        r = c.get(path)
        assert r.status_code == 200, path
        assert_inert(r.text, text)


_hostile_text = st.text(
    alphabet=st.sampled_from(list("<>\"'&=/: ;\\`\x1b\x07\u202e\u200bscriptonerrjavascimg")), max_size=40
) | st.sampled_from(HOSTILE)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_hostile_text)
def test_generated_hostile_text_renders_as_text(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    root = tmp_path_factory.mktemp("gen")
    msg_id = put_hostile(root, text)
    c = client_for(Source(str(root)))
    for path in ("/a/Victim?state=dead", f"/a/Victim/m/{msg_id}"):
        r = c.get(path)
        assert r.status_code == 200
        assert_inert(r.text, text)
        assert not re.search(
            r"<(script|img|svg|iframe)[\s>]", r.text.replace(f'<script src="{P}/static/ui.js"', "")
        )


@settings(max_examples=15, deadline=None)
@given(raw=st.binary(min_size=1, max_size=30))
def test_generated_file_names_render(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    name = os.fsdecode(raw.replace(b"/", b"_").replace(b"\0", b"_"))
    if name in (".", ".."):
        return
    root = tmp_path_factory.mktemp("names")
    with FileMailbox(root, "Victim", fsync="never"):
        pass
    path = os.path.join(os.fsencode(root / "Victim" / "dead"), os.fsencode(name))
    with open(path, "wb") as f:
        f.write(b'{"topic": "x", "payload": "<script>alert(1)</script>"}')
    c = client_for(Source(str(root)))
    r = c.get("/a/Victim?state=dead")
    assert r.status_code == 200
    assert_inert(r.text, name)
    for key in re.findall(rf'href="{P}/a/Victim/m/([^"]+)"', r.text):
        assert c.get(f"/a/Victim/m/{key}").status_code == 200


@pytest.fixture
def graph_root(root: Path) -> Iterator[Path]:
    yield root


def test_graph_json_escapes_and_counts(graph_root: Path) -> None:
    from hybridcomms.ui._graph import Flows, look
    from hybridcomms.ui._listing import HeadCache

    put_hostile(graph_root, "<script>alert(1)</script>\x1b[2J")
    flows = Flows()
    flows.replace(look(Source(str(graph_root)), HeadCache()))
    g = flows.graph()
    edges = {(e["source"], e["target"]): e for e in g["edges"]}
    assert edges[("Captain-THEA", "Agent-1")]["count"] == 7
    assert edges[("Captain-THEA", "Agent-1")]["dead"] == 1
    assert edges[("Agent-1", "Agent-2")]["count"] == 1
    assert any("\\x1b" in s and "\x1b" not in s for s, _ in edges)


def test_a_dead_reason_that_cannot_be_reached_reads_as_unreadable_not_as_a_failed_page(
    tmp_path: Path,
) -> None:
    """`with_reason` on a mailbox whose dead/ cannot be opened (made by hand with only new/, or
    closed meanwhile) says the reason is unreadable, as it did before the dead/ lookup moved out of
    its try (found by a review of the complexity round)."""
    from hybridcomms.backends.base import MessageInfo
    from hybridcomms.ui._source import with_reason

    root = tmp_path / "root"
    (root / "Agent-1" / "new").mkdir(parents=True)
    info = MessageInfo(
        state=State.DEAD, name="x.json", path=None, id=None, attempt=0, due=None, size=0,
        changed_at=0.0, reason=None, last_error=None,
    )  # fmt: skip
    mb = FileMailbox(root, "Agent-1", read_only=True, fsync="never")
    assert with_reason(mb, info).reason == {"reason": "(unreadable reason file)"}
    mb.close()
    assert with_reason(mb, info).reason == {"reason": "(unreadable reason file)"}


def test_a_file_url_whose_path_looks_like_a_url_is_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Source("file://host:/x")` listed the agents of the folder `host:/x` but opened each mailbox
    by reading `host:/x` again as a URL (an unknown scheme): every row failed (found by a review)."""
    from hybridcomms.ui._source import Source

    monkeypatch.chdir(tmp_path)
    with FileMailbox(Path("host:/x"), "Agent-1", fsync="never") as mb:
        mb.put(Message("t", {}))
    for where in ("file://host:/x", "FILE://host:/x"):
        source = Source(where)
        assert source.files and source.stats("Agent-1").states[State.NEW].count == 1
