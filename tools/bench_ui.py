"""How fast the dashboard answers over a large fleet (issue #24: 100 agents x 10,000 messages; the
fleet page under 1 s, a mailbox page under 0.5 s).

The fleet is written straight in the on-disk layout (runtime_layout.md) on tmpfs: per agent 6,000
waiting, 3,000 done and 1,000 dead messages (each with its reason file). Then, through the web
application in process (Starlette's TestClient: the whole request path, guard and templates included,
no socket):

- the fleet page cold (it counts what half a second allows and marks the rest as counting), the time
  to count them all (the refresher does it at start), the page once counted (cached: what a page costs
  while the watcher's notifications say nothing changed), and after one agent changed;
- a mailbox page: the first page of new/, a far page, the dead letters, and a topic filter.

    python tools/bench_ui.py [--agents 100] [--messages 10000] [--dir /dev/shm]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid

import orjson
from starlette.testclient import TestClient

from hybridcomms.ui._app import create_app
from hybridcomms.ui._security import Guard
from hybridcomms.ui._source import Source

TOKEN = "bench"


def build(root: str, agents: int, messages: int) -> None:
    now = time.time()
    due = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now - 3600)) + "000000Z"
    for a in range(agents):
        agent = f"Agent-{a:03d}"
        for folder in ("tmp", "new", "processing", "done", "dead", "errors"):
            os.makedirs(os.path.join(root, agent, folder), mode=0o700)
        split = {"new": messages * 6 // 10, "done": messages * 3 // 10}
        split["dead"] = messages - split["new"] - split["done"]
        for folder, count in split.items():
            base = os.path.join(root, agent, folder)
            for i in range(count):
                mid = uuid.uuid4().hex
                name = f"2M.{due}.{mid}.a{0 if folder == 'new' else 1}.json"
                body = {
                    "version": 1,
                    "id": mid,
                    "topic": f"task.{i % 17}",
                    "sender": f"Agent-{(a + 1) % agents:03d}",
                    "recipient": agent,
                    "created_at": "2026-12-04T10:00:00.000000Z",
                    "priority": "MEDIUM",
                    "headers": {},
                    "payload": {"n": i},
                }
                with open(os.path.join(base, name), "wb") as f:
                    f.write(orjson.dumps(body))
                if folder == "dead":
                    reason = {"reason": "failed 5 of 5 attempts", "last_error": "ValueError: bad", "id": mid}
                    with open(os.path.join(base, name + ".reason.json"), "wb") as f:
                        f.write(orjson.dumps(reason))


def timed(client: TestClient, path: str, runs: int = 5) -> tuple[float, float]:
    """(first, median of the following runs) in seconds."""
    times = []
    for _ in range(max(runs, 0) + 1):
        start = time.perf_counter()
        r = client.get(path)
        times.append(time.perf_counter() - start)
        assert r.status_code == 200, (path, r.status_code)
    return times[0], statistics.median(times[1:] or times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, default=100)
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="bench-ui-", dir=args.dir)
    root = os.path.join(work, "mailboxes")
    try:
        start = time.perf_counter()
        build(root, args.agents, args.messages)
        print(f"built {args.agents} agents x {args.messages} messages in {time.perf_counter() - start:.1f} s")
        guard = Guard(TOKEN)
        app, state = create_app(Source(root), guard, live=False)
        # Every page lives under the secret path prefix (docs/ui.md): the client's base URL holds it.
        client = TestClient(app, base_url="http://127.0.0.1:8765" + guard.prefix)
        client.get(f"/?token={TOKEN}", follow_redirects=False)
        cold, _ = timed(client, "/", runs=0)
        counting = client.get("/").text.count('class="counting"')
        print(f"fleet page, cold: {cold * 1000:.0f} ms (counts what 0.5 s allows; {counting} still counting)")
        start = time.perf_counter()
        state.fleet.refresh()
        print(f"counting the rest (the refresher does it at start): {time.perf_counter() - start:.1f} s")
        _, warm = timed(client, "/")
        print(f"fleet page, counted: {warm * 1000:.1f} ms (cached; counted again only when notified)")
        state.fleet.mark("Agent-000")
        one, _ = timed(client, "/", runs=1)
        print(f"fleet page after one agent changed: {one * 1000:.0f} ms")

        def agent(i: int) -> str:
            return f"Agent-{i % args.agents:03d}"

        far = max(1, min(100, (args.messages * 6 // 10) // 50))  # a far page of new/ (50 rows a page)
        for label, path in (
            ("mailbox page, new/ page 1", f"/a/{agent(0)}?state=new"),
            (f"mailbox page, new/ page {far}", f"/a/{agent(1)}?state=new&page={far}"),
            ("mailbox page, dead/ page 1", f"/a/{agent(2)}?state=dead"),
            ("mailbox page, topic filter", f"/a/{agent(3)}?state=new&topic=task.16"),
        ):
            first, again = timed(client, path)
            print(f"{label}: first {first * 1000:.0f} ms, then {again * 1000:.0f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
