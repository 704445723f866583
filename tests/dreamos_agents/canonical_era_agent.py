"""An agent of the canonical Dream.OS era (37fd64c, dreamos.coordination.agent_bus), run unchanged after
hybridcomms' install(): the singleton bus with patterns, bound-method handlers, the file locks with
filelock's exception. Prints OK."""

import json
import sys
import threading
from pathlib import Path

from hybridcomms.compat import dreamos as compat

compat.install()

import filelock  # noqa: E402
from dreamos.coordination.agent_bus import AgentBus, BaseEvent, EventType  # noqa: E402
from dreamos.core.utils.file_locking import acquire_lock, read_json_locked, write_json_locked  # noqa: E402

WORK = Path(sys.argv[1])


class Monitor:
    def __init__(self):
        self.events = []

    def on_task(self, event):
        self.events.append(event.event_type)


def main():
    assert len(EventType) == 61 and EventType.TASK_COMPLETED.value == "dreamos.task.completed"
    bus = AgentBus()
    monitor = Monitor()
    # A bound method under two patterns that both match: it runs once per event.
    bus.subscribe("dreamos.task.*", monitor.on_task)
    bus.subscribe(EventType.TASK_COMPLETED, monitor.on_task)
    bus.dispatch_event(BaseEvent(EventType.TASK_COMPLETED, "Agent-1", {"task_id": "t"}))
    assert len(monitor.events) == 1, monitor.events
    bus.unsubscribe(EventType.TASK_COMPLETED, monitor.on_task)  # another bound-method object: found
    bus.unsubscribe("dreamos.task.*", monitor.on_task)
    bus.dispatch_event(BaseEvent(EventType.TASK_COMPLETED, "Agent-1", {}))
    assert len(monitor.events) == 1

    # except filelock.Timeout keeps working around acquire_lock.
    target = WORK / "state.json"
    WORK.mkdir(parents=True, exist_ok=True)
    write_json_locked(target, {"v": 1})
    held = threading.Event()
    release = threading.Event()

    def holder():
        with filelock.FileLock(str(target) + ".lock"):
            held.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(30)
    try:
        with acquire_lock(target, timeout=0.2):
            raise AssertionError("the lock was held")
    except filelock.Timeout as exc:
        assert isinstance(exc, TimeoutError)
    finally:
        release.set()
        t.join()

    # read_json_locked on invalid JSON: json.JSONDecodeError, as the legacy function raised.
    target.write_text("{broken")
    try:
        read_json_locked(target)
        raise AssertionError("no error")
    except json.JSONDecodeError:
        pass


if __name__ == "__main__":
    main()
    print("OK")
