"""Chaos run: producers, consumers and (at least two) recoverers on one mailbox, SIGKILLed, frozen
(SIGSTOP past their lease) and restarted at random, optionally with the watch service; then drained
and checked.

    python tools/chaos.py --messages 3000 --seconds 20 [--watch] [--json] [--root DIR] [--seed N]
    python tools/chaos.py --messages 1000 --rate 400 --kills 12 --seconds 60   # bounded by progress
    python tools/chaos.py --fsync always --done-retention 0       # the ack removes the file

``--fsync`` (never by default) and ``--done-retention`` (``all`` by default: every acked file kept, the
strictest check; ``N``, or ``default``, the library's) are the mailbox's options in every role.

With ``--kills K`` the chaos ends as soon as every message was produced and K kills happened
(``--seconds`` is then only the longest it may last); without it, it lasts ``--seconds``.

``--fanout`` adds a phase on the ephemeral path after it (``--messages 0``: that phase alone):
publishers and subscribers sharing the root's bus, killed and stopped at random for
``--fanout-seconds``, then every drop accounted for (``tools/chaos_fanout.py``); its result is the
``fanout`` object of the output, and the run fails unless it is ``ok`` too.

``--redis`` adds a phase on Redis after it (``--messages 0``: that phase alone): producers and
consumers of one `RedisMailbox` SIGKILLed at random, and Redis itself killed (-9) and restarted
``--redis-kills`` times, for ``--redis-seconds``; nobody runs ``recover``; then nothing acknowledged
may be lost (``tools/chaos_redis.py``). Its result is the ``redis`` object of the output, and the run
fails unless it is ``ok`` too.

Prints one JSON object (``--json``) or a summary with
``produced, acked, dead, lost, duplicates, redeliveries, kills, stops, leftovers, ok``, and exits
non-zero unless ``lost == 0 and duplicates == 0 and leftovers == 0``.

- produced: puts that returned (each producer logs an id after its put returns);
- lost: produced ids in no final state (``done/`` or ``dead/``) after the drain, and not acked
  either (with a retention, acked files leave ``done/``: a consumer logs an id when it is about to
  ack and again once the ack returned);
- trimmed: acked ids no longer in ``done/`` (the retention at work); ``unconfirmed``: ids whose ack
  was started but not seen returning (a kill in between) and that are not in ``done/``: at most one
  per kill of a consumer, else the run fails;
- duplicates: ids with more than one file in the final folders, plus ids acked twice;
- redeliveries: deliveries past the first (kills and steals cost attempts; that is allowed);
- leftovers: files still in ``new/``, ``processing/`` or ``tmp/`` after the drain.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

AGENT = "Chaos-1"
LEASE = 1.0
#: The mailbox options of every role, set by the conductor (``--fsync``, ``--done-retention``).
FSYNC_ENV, RETENTION_ENV = "HC_CHAOS_FSYNC", "HC_CHAOS_DONE_RETENTION"


def _retention() -> dict[str, Any]:
    value = os.environ.get(RETENTION_ENV, "all")
    if value == "default":
        return {}
    return {"done_retention": None if value == "all" else int(value)}


def _mailbox(root: str) -> Any:
    from hybridcomms import Backoff, FileMailbox

    return FileMailbox(
        root,
        AGENT,
        fsync=os.environ.get(FSYNC_ENV, "never"),
        **_retention(),
        lease=LEASE,
        max_attempts=1_000_000,
        backoff=Backoff(initial=0.0, factor=1.0, maximum=0.0, jitter=0.0),
        tmp_max_age=5.0,
    )


# -- roles (each runs in its own process) ---------------------------------------------------------


def role_producer(root: str, log_path: str, prefix: str, stop_file: str, rate: str) -> None:
    """Put messages at about ``rate`` per second (spread over the run, so kills land while work is
    flowing) until the conductor says stop."""
    from hybridcomms import Message

    mb = _mailbox(root)
    interval = 1.0 / float(rate)
    with open(log_path, "a", buffering=1) as log:
        i = 0
        next_at = time.monotonic()
        while not os.path.exists(stop_file):
            msg_id = f"{prefix}-{i}"
            mb.put(Message("chaos", {"i": i}, id=msg_id))
            log.write(msg_id + "\n")  # after the put returned: this id must never be lost
            i += 1
            next_at += interval
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)


def role_consumer(root: str, log_path: str) -> None:
    from hybridcomms import DeliveryLostError

    mb = _mailbox(root)
    rng = random.Random()
    with open(log_path, "a", buffering=1) as log:
        while True:
            d = mb.claim(timeout=0.5)
            if d is None:
                continue
            if rng.random() < 0.3:
                time.sleep(rng.random() * 0.004)  # a handler at work: kills and freezes land here
            log.write(f"+{d.message.id} {d.attempt}\n")  # about to ack (its file may be trimmed)
            try:
                d.ack()
            except DeliveryLostError:
                continue  # stolen while we were frozen: someone else delivers it
            log.write(f"{d.message.id} {d.attempt}\n")


def role_recoverer(root: str) -> None:
    mb = _mailbox(root)
    while True:
        mb.recover()
        time.sleep(0.01)


# -- the conductor --------------------------------------------------------------------------------


class Child:
    def __init__(self, kind: str, argv: list[str]) -> None:
        self.kind = kind
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped_until = 0.0

    def start(self) -> None:
        quiet = subprocess.DEVNULL if self.kind == "watch" else None  # its banner on every restart
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=quiet
        )
        self.stopped_until = 0.0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _drain(root: Path, work: Path) -> None:
    """Everything the chaos left is given back and delivered by one calm consumer (logged in
    ``acked-drain.log``)."""
    drain_log = work / "acked-drain.log"
    mb = _mailbox(str(root))
    mb.tmp_max_age = 0.0
    # Until new/ and processing/ are empty (a minute at most): a message the watch service's recovery
    # gave back is due after the library's default backoff (about a second, jitter included), and a
    # drain that stopped at the first claim finding nothing due left it in new/ (seen as "lost 1").
    deadline = time.monotonic() + 60
    with open(drain_log, "a") as log:
        while time.monotonic() < deadline:
            rep = mb.recover(now=time.time() + 10 * LEASE)
            got = 0
            while (d := mb.claim(timeout=0.2)) is not None:
                d.ack()
                log.write(f"{d.message.id} {d.attempt}\n")
                got += 1
            left = os.listdir(mb.path / "processing") + os.listdir(mb.path / "new")
            if not rep and got == 0 and not left:
                break
    mb.close()


def _read_lines(paths: list[Path]) -> list[str]:
    out: list[str] = []
    for p in paths:
        if p.exists():
            out += [line for line in p.read_text().splitlines() if line]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    root = Path(args.root or tempfile.mkdtemp(prefix="hybridcomms-chaos-"))
    work = root.parent / (root.name + ".chaos")
    work.mkdir(parents=True, exist_ok=True)
    _mailbox(str(root)).close()
    stop_file = str(work / "stop-producing")
    me = [sys.executable, os.path.abspath(__file__)]
    children: list[Child] = []
    generation = collections.Counter[str]()

    def producer_argv(k: int) -> list[str]:
        generation[f"p{k}"] += 1
        prefix = f"p{k}g{generation[f'p{k}']}"
        total = args.rate or args.messages / max(args.seconds * 0.8, 1.0)
        rate = str(max(total / args.producers, 1.0))
        log = str(work / f"produced-{prefix}.log")
        return [*me, "--role", "producer", str(root), log, prefix, stop_file, rate]

    for k in range(args.producers):
        children.append(Child(f"producer{k}", producer_argv(k)))
    for k in range(args.consumers):
        children.append(
            Child("consumer", [*me, "--role", "consumer", str(root), str(work / f"acked-{k}.log")])
        )
    for _ in range(args.recoverers):
        children.append(Child("recoverer", [*me, "--role", "recoverer", str(root)]))
    if args.watch:
        watch = [
            sys.executable,
            "-m",
            "hybridcomms.cli",
            "--root",
            str(root),
            "watch",
            "--recover-every",
            "0.5",
            "--rescan-every",
            "1",
        ]
        children.append(Child("watch", watch))
    for c in children:
        c.start()

    kills = stops = 0
    deadline = time.monotonic() + args.seconds
    produced_logs = lambda: sorted(work.glob("produced-*.log"))  # noqa: E731
    while time.monotonic() < deadline:
        if args.kills is not None and kills >= args.kills and os.path.exists(stop_file):
            break  # bounded by progress: every message produced, and the kills asked for done
        time.sleep(rng.uniform(0.05, 0.25))
        now = time.monotonic()
        for c in children:  # thaw the frozen ones whose time is up
            if c.stopped_until and now >= c.stopped_until and c.proc is not None:
                c.proc.send_signal(signal.SIGCONT)
                c.stopped_until = 0.0
        if not os.path.exists(stop_file) and len(_read_lines(produced_logs())) >= args.messages:
            Path(stop_file).touch()
        victim = rng.choice(children)
        if victim.stopped_until:
            continue
        if victim.kind == "consumer" and rng.random() < 0.25:
            # frozen past its lease: a hung owner whose message the recoverers must steal
            assert victim.proc is not None
            victim.proc.send_signal(signal.SIGSTOP)
            victim.stopped_until = now + LEASE * rng.uniform(1.2, 2.5)
            stops += 1
            continue
        victim.kill()
        kills += 1
        if victim.kind.startswith("producer"):
            victim.argv = producer_argv(int(victim.kind[len("producer") :]))
        victim.start()
    Path(stop_file).touch()
    for c in children:
        if c.proc is not None and c.stopped_until:
            c.proc.send_signal(signal.SIGCONT)
        c.kill()

    _drain(root, work)

    produced = set(_read_lines(produced_logs()))
    lines = _read_lines(sorted(work.glob("acked-*.log")))
    started = {line[1:].split()[0] for line in lines if line.startswith("+")}
    acks = [line.split() for line in lines if not line.startswith("+")]
    acked_count = collections.Counter(a[0] for a in acks)
    final = collections.Counter[str]()
    from hybridcomms._names import parse_name

    def ids_in(state: str) -> list[str]:
        out = []
        for name in os.listdir(root / AGENT / state):
            if name.endswith(".reason.json"):
                continue
            info = parse_name(name)
            out.append(info.id if info else name)
        return out

    done_ids, dead_ids = ids_in("done"), ids_in("dead")
    final.update(done_ids)
    final.update(dead_ids)
    leftovers = sum(len(os.listdir(root / AGENT / s)) for s in ("new", "processing", "tmp"))
    acked_ids = set(acked_count)
    trimmed = len(acked_ids - set(final))
    unconfirmed = len(started - acked_ids - set(final))
    consumer_kills = kills  # an upper bound: every kill may have been a consumer's
    lost_ids = sorted(produced - set(final) - acked_ids - started)
    lost = len(lost_ids)
    duplicates = len({i for i, n in final.items() if n > 1} | {i for i, n in acked_count.items() if n > 1})
    redeliveries = sum(int(a[1]) - 1 for a in acks if len(a) > 1 and a[1].isdigit())
    result = {
        "produced": len(produced),
        "acked": len(set(done_ids) | acked_ids),
        "dead": len(dead_ids),
        "lost": lost,
        "duplicates": duplicates,
        "redeliveries": redeliveries,
        "kills": kills,
        "stops": stops,
        "leftovers": leftovers,
        "trimmed": trimmed,
        "unconfirmed": unconfirmed,
        "done_kept": len(done_ids),
        "fsync": os.environ.get(FSYNC_ENV, "never"),
        "done_retention": os.environ.get(RETENTION_ENV, "all"),
        "seconds": args.seconds,
        "watch": bool(args.watch),
        "root": str(root),
    }
    result["ok"] = lost == 0 and duplicates == 0 and leftovers == 0 and unconfirmed <= consumer_kills
    if not result["ok"]:  # what a failed run left, to tell a loss from a straggler next time
        result["trail"] = _trail(root, work, lost_ids[:5])
    return result


def _trail(root: Path, work: Path, ids: list[str]) -> dict[str, Any]:
    """For a failed run: the files left in ``new/``, ``processing/`` and ``tmp/``, and for each lost
    id the log lines and the files (in any folder) that name it."""
    left = {s: sorted(os.listdir(root / AGENT / s))[:20] for s in ("new", "processing", "tmp")}
    names = {s: os.listdir(root / AGENT / s) for s in ("new", "processing", "done", "dead", "tmp")}
    per_id = {}
    for msg_id in ids:
        lines = [
            f"{log.name}: {line}"
            for log in sorted(work.glob("*.log"))
            for line in _read_lines([log])
            if msg_id in line
        ]
        files = [f"{s}/{n}" for s, found in names.items() for n in found if msg_id in n]
        per_id[msg_id] = {"logs": lines[:20], "files": files}
    return {"left": left, "lost": per_id}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("--messages", type=int, default=3000, help="stop producing after this many puts")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long the chaos lasts")
    ap.add_argument("--watch", action="store_true", help="also run (and kill) the watch service")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--root", help="mailbox root (default: a new temporary folder)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument(
        "--kills", type=int, default=None, help="end once this many kills happened and all was produced"
    )
    ap.add_argument("--rate", type=float, default=None, help="puts per second in all (default: spread)")
    ap.add_argument("--producers", type=int, default=2)
    ap.add_argument("--consumers", type=int, default=3)
    ap.add_argument("--recoverers", type=int, default=2)
    ap.add_argument("--fsync", default=None, help="the mailbox's fsync setting (default: never)")
    ap.add_argument(
        "--done-retention", default=None, help="acked files kept: N, all (the default) or default"
    )
    ap.add_argument("--fanout", action="store_true", help="also run the fanout phase (see above)")
    ap.add_argument("--fanout-seconds", type=float, default=8.0, help="how long the fanout chaos lasts")
    ap.add_argument("--fanout-publishers", type=int, default=2)
    ap.add_argument("--fanout-subscribers", type=int, default=3)
    ap.add_argument("--fanout-rate", type=float, default=2000.0, help="events per second per publisher")
    ap.add_argument("--redis", action="store_true", help="also run the Redis phase (see above)")
    ap.add_argument("--redis-seconds", type=float, default=10.0, help="how long the Redis chaos lasts")
    ap.add_argument("--redis-kills", type=int, default=2, help="times Redis itself is killed and restarted")
    args, rest = ap.parse_known_args(argv)
    if args.fsync is not None:  # for every role this conductor starts
        os.environ[FSYNC_ENV] = args.fsync
    if args.done_retention is not None:
        os.environ[RETENTION_ENV] = args.done_retention
    if args.role in ("fanout-publisher", "fanout-subscriber"):
        import chaos_fanout

        if args.role == "fanout-publisher":
            chaos_fanout.role_publisher(*rest)
        else:
            chaos_fanout.role_subscriber(*rest)
        return 0
    if args.role == "producer":
        role_producer(*rest)
        return 0
    if args.role == "consumer":
        role_consumer(*rest)
        return 0
    if args.role == "recoverer":
        role_recoverer(*rest)
        return 0
    if args.recoverers < 2:
        ap.error("--recoverers must be at least 2 (recoverers racing each other is the point)")
    result: dict[str, Any] = run(args) if args.messages > 0 else {"ok": True}
    if args.fanout:
        import chaos_fanout

        base = Path(args.root or result.get("root") or tempfile.mkdtemp(prefix="hybridcomms-chaos-"))
        fan = chaos_fanout.run_fanout(
            base,
            args.fanout_seconds,
            args.fanout_publishers,
            args.fanout_subscribers,
            args.fanout_rate,
            args.seed,
        )
        result["fanout"] = fan
        result["ok"] = result.pop("ok") and fan["ok"]
    if args.redis:
        import chaos_redis

        base = Path(args.root or result.get("root") or tempfile.mkdtemp(prefix="hybridcomms-chaos-"))
        red = chaos_redis.run_redis(base, args.redis_seconds, 2, 3, args.redis_kills, args.seed)
        result["redis"] = red
        result["ok"] = result.pop("ok") and red["ok"]
    if args.json:
        import json

        print(json.dumps(result))
    else:
        print(" ".join(f"{k}={v}" for k, v in result.items()))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
