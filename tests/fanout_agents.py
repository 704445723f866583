"""Subscriber processes for tests/test_fanout.py (run as scripts, one process each).

    python fanout_agents.py WHERE LOGDIR NAME PATTERN [PATTERN ...]

WHERE is a mailbox root (this host) or a redis:// URL. The process subscribes its bus to the patterns
(and to ``ctl.stop``), shares the bus, writes ``LOGDIR/NAME.ready``, logs every event it gets as a line
``topic payload`` in ``LOGDIR/NAME.log``, and exits on ``ctl.stop``.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from hybridcomms.bus import AgentBus, Event
from hybridcomms.bus.fanout import share_bus


def main() -> None:
    where, logdir, name, patterns = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
    bus = AgentBus()
    stop = threading.Event()
    log = open(logdir / f"{name}.log", "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    def record(event: Event) -> None:
        log.write(f"{event.topic} {event.payload}\n")

    for pattern in patterns:
        bus.subscribe(pattern, record)
    bus.subscribe("ctl.stop", lambda event: stop.set())
    remote = "://" in where
    if not remote:
        Path(where).mkdir(parents=True, exist_ok=True)  # an agent's mailbox root exists; this one is new
    release = share_bus(bus, url=where) if remote else share_bus(bus, root=where)
    (logdir / f"{name}.ready").write_text("ready")
    stop.wait(120)
    release()


if __name__ == "__main__":
    main()
