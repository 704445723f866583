"""The life of a message in a mailbox: its states and the moves allowed between them.

This table is the one definition. The file mailbox refuses any move that is not in it, and the
reaper, the CLI, the docs and the tests read it from here.

::

    tmp ──publish──> new ──claim──> processing ──ack──> done
                      ^  \\                │   │
                      │   `──reject───┐    │   `──give_up──> dead
                      │               v    │                  │
                      │              dead  `──nack/recover──> new
                      `──────────────requeue──────────────────'
"""

from __future__ import annotations

from enum import Enum

__all__ = ["TRANSITIONS", "State", "Transition", "check_transition"]


class State(str, Enum):
    """A message's state is the folder its file is in."""

    TMP = "tmp"  # being written; never read by consumers
    NEW = "new"  # delivered, waiting to be claimed (possibly not yet due after a nack)
    PROCESSING = "processing"  # claimed by exactly one consumer, which holds its lock
    DONE = "done"  # acknowledged; kept for audit until purged
    DEAD = "dead"  # given up; a ``<name>.reason.json`` next to it says why

    @property
    def folder(self) -> str:
        return self.value


class Transition(str, Enum):
    PUBLISH = "publish"  # tmp -> new: the atomic rename that makes a message visible
    CLAIM = "claim"  # new -> processing: the rename is the lock; the attempt count goes up here
    ACK = "ack"  # processing -> done
    NACK = "nack"  # processing -> new, with a not-before time (backoff)
    RECOVER = "recover"  # processing -> new: the owner died (lock free) or its lease expired
    GIVE_UP = "give_up"  # processing -> dead: attempts exhausted, or dead-lettered by the handler
    REJECT = "reject"  # new -> dead: undecodable, too large, a symlink, not a regular file
    REQUEUE = "requeue"  # dead -> new (or done -> new, a replay): an operator's decision


TRANSITIONS: dict[tuple[State, State], frozenset[Transition]] = {
    (State.TMP, State.NEW): frozenset({Transition.PUBLISH}),
    (State.NEW, State.PROCESSING): frozenset({Transition.CLAIM}),
    (State.NEW, State.DEAD): frozenset({Transition.REJECT}),
    (State.PROCESSING, State.DONE): frozenset({Transition.ACK}),
    (State.PROCESSING, State.NEW): frozenset({Transition.NACK, Transition.RECOVER}),
    (State.PROCESSING, State.DEAD): frozenset({Transition.GIVE_UP}),
    (State.DEAD, State.NEW): frozenset({Transition.REQUEUE}),
    (State.DONE, State.NEW): frozenset({Transition.REQUEUE}),
}


def check_transition(src: State, dst: State, how: Transition) -> None:
    """Raise ``ValueError`` unless ``how`` is an allowed move from ``src`` to ``dst``."""
    allowed = TRANSITIONS.get((src, dst), frozenset())
    if how not in allowed:
        raise ValueError(f"{how.value}: no such move from {src.value}/ to {dst.value}/")
