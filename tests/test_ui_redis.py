"""The dashboard on the Redis backend: the same pages and actions through the mailbox contract, and
the live counts taken by polling (Redis has no file notifications)."""

from __future__ import annotations

import re
import time
import uuid

import pytest

pytest.importorskip("starlette")
pytest.importorskip("redis")

from starlette.testclient import TestClient

from hybridcomms import Message, State
from hybridcomms.backends import open_mailbox
from hybridcomms.ui._app import create_app
from hybridcomms.ui._security import Guard
from hybridcomms.ui._source import Source

pytestmark = pytest.mark.redis
TOKEN = "redis-test-token"


def test_pages_and_requeue_on_redis(redis_url: str) -> None:
    agent = f"UI-{uuid.uuid4().hex[:8]}"
    with open_mailbox(redis_url, agent) as mb:
        for i in range(3):
            mb.put(Message(topic=f"<script>t.{i}", payload={"i": i}, sender="Sender-1"))
        d = mb.claim()
        assert d is not None
        d.dead('"onerror=alert(1)')
        dead_id = d.message.id
    app, _ = create_app(Source(redis_url), Guard(TOKEN, allow_actions=True), live=False)
    P = Guard(TOKEN).prefix
    c = TestClient(app, base_url="http://127.0.0.1:8765" + P)
    c.get(f"/?token={TOKEN}")
    fleet = c.get("/").text
    row = fleet.split(f'data-agent="{agent}"')[1].split("</tr>")[0]
    assert '<td data-f="waiting">2</td>' in row and f'<a href="{P}/a/{agent}?state=dead">1</a>' in row
    page = c.get(f"/a/{agent}?state=dead").text
    assert "&lt;script&gt;t.0" in page and "&#34;onerror=alert(1)" in page and "<script>t" not in page
    (key,) = re.findall(rf'href="{P}/a/{agent}/m/([^"]+)"', page)
    msg = c.get(f"/a/{agent}/m/{key}").text
    assert "entry" in msg and "Sender-1" in msg
    assert c.get(f"/a/{agent}/m/..%2f..%2fx").status_code == 404
    csrf = Guard(TOKEN).csrf
    r = c.post(f"/a/{agent}/requeue", data={"csrf": csrf, "key": dead_id, "confirm": "yes"})
    assert "1 message(s) requeued" in r.text
    with open_mailbox(redis_url, agent, create=False) as mb:
        info = mb.get(dead_id)
        assert info is not None and info.state is State.NEW


def test_live_counts_by_polling_on_redis(redis_url: str) -> None:
    agent = f"UI-{uuid.uuid4().hex[:8]}"
    with open_mailbox(redis_url, agent) as mb:
        mb.put(Message(topic="x", payload=1))
        _, state = create_app(Source(redis_url), Guard(TOKEN), poll=0.2, bus=False)
        state.live.start(bus=False)
        try:
            mb.put(Message(topic="x", payload=2))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                rows = {r["agent"]: r for r in state.live.snapshot()["rows"]}
                if rows.get(agent, {}).get("waiting") == 2:
                    break
                time.sleep(0.05)
            assert rows[agent]["waiting"] == 2
        finally:
            state.live.close()
