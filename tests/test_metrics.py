"""Prometheus metrics: parsed with prometheus_client's own text parser."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from waiting import eventually

from hybridcomms import AgentBus, FileMailbox, Message
from hybridcomms.metrics import EventCounter, dead_reason_class, registry_for

HC = [sys.executable, "-m", "hybridcomms"]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def fill(root: Path) -> None:
    with FileMailbox(root, "Agent-1", fsync="never", max_attempts=1) as mb:
        for i in range(3):
            mb.put(Message("t", i))
        d = mb.claim()
        assert d is not None
        d.nack(error="boom")  # -> dead (1 attempt)


def test_stats_writes_the_textfile_and_fail_if_gives_cron_an_exit_code(root: Path, tmp_path: Path) -> None:
    fill(root)
    out = tmp_path / "hybridcomms.prom"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCOMMS_")}
    ok = subprocess.run(
        [*HC, "--root", str(root), "stats", "--prometheus", str(out), "--fail-if", "new>5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    got = samples(out.read_text())
    assert got[("hybridcomms_messages", (("agent", "Agent-1"), ("state", "new")))] == 2
    assert got[("hybridcomms_messages", (("agent", "Agent-1"), ("state", "dead")))] == 1
    assert ("hybridcomms_oldest_age_seconds", (("agent", "Agent-1"), ("state", "new"))) in got
    assert got[("hybridcomms_delayed_messages", (("agent", "Agent-1"),))] == 0
    bad = subprocess.run(
        [*HC, "--root", str(root), "stats", "--fail-if", "dead>0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bad.returncode == 1 and "Agent-1: dead>0" in bad.stderr
    wrong = subprocess.run(
        [*HC, "--root", str(root), "stats", "--fail-if", "dead>>0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1  # bad usage, not "it held"


def test_watch_serves_metrics_with_event_counts(root: Path) -> None:
    FileMailbox(root, "Agent-1", fsync="never").close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCOMMS_")}
    p = subprocess.Popen(
        [*HC, "--root", str(root), "watch", "--metrics-port", str(port), "--recover-every", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert p.stderr is not None
        while "watching" not in p.stderr.readline():  # handshake: metrics served, files watched
            assert p.poll() is None
        with FileMailbox(root, "Agent-1", fsync="never") as mb:
            mb.put(Message("t"))
            d = mb.claim()
            assert d is not None
            d.ack()
        key = ("hybridcomms_events_total", (("agent", "Agent-1"), ("kind", "acked")))
        got = eventually(
            lambda: samples(
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            ),
            "the exporter to count the ack",
            20,
            until=lambda got: got.get(key) == 1,
        )
        assert got[("hybridcomms_messages", (("agent", "Agent-1"), ("state", "done")))] == 1
    finally:
        p.terminate()
        p.communicate(timeout=30)


def test_dead_letters_are_counted_by_reason_class_and_bus_publishes(root: Path) -> None:
    registry = registry_for(root, bus=True)
    counter = EventCounter(registry)
    from hybridcomms import MailboxWatcher

    FileMailbox(root, "Agent-1", fsync="never").close()  # watched from the start
    with MailboxWatcher(root, on_event=counter, recover_every=0):
        fill(root)
        key = ("hybridcomms_dead_letters_total", (("agent", "Agent-1"), ("reason", "attempts")))
        eventually(
            lambda: samples(_text(registry)), "the dead letter counted", 20, until=lambda s: s.get(key) == 1
        )
    before = samples(_text(registry))[("hybridcomms_bus_publishes_total", ())]
    AgentBus().publish("x.y", {})
    assert samples(_text(registry))[("hybridcomms_bus_publishes_total", ())] == before + 1
    assert dead_reason_class("invalid JSON: x") == "undecodable"
    assert dead_reason_class("expired at 1.0 before it was handled") == "expired"
    assert dead_reason_class("exit status 3: boom (attempt 5 of 5)") == "attempts"


def _text(registry: object) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()  # type: ignore[arg-type]


def test_comms_handler_runs_failures_and_time_are_exported(root: Path) -> None:
    from hybridcomms import Backoff, Comms

    registry = registry_for(None, bus=True)
    fast = Backoff(initial=0.0, factor=1.0, maximum=0.0, jitter=0.0)
    with Comms("Metric-Agent", root=root, fsync="never", backoff=fast, bus=AgentBus()) as comms:
        calls = []

        def handler(m: object) -> None:
            calls.append(m)
            if len(calls) == 1:
                raise RuntimeError("first try fails")

        comms.subscribe("dreamos.agent.Metric-Agent.task.command", handler)
        comms.send("Metric-Agent", "dreamos.agent.Metric-Agent.task.command", {})
        eventually(lambda: len(calls), "the handler's second run", 20, until=lambda n: n >= 2)
    got = samples(_text(registry))
    assert got[("hybridcomms_handler_runs_total", (("agent", "Metric-Agent"), ("result", "failed")))] == 1
    assert got[("hybridcomms_handler_runs_total", (("agent", "Metric-Agent"), ("result", "ok")))] == 1
    assert got[("hybridcomms_handler_seconds_total", (("agent", "Metric-Agent"),))] >= 0
