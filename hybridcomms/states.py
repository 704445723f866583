"""The life of a message in a mailbox: its states and the moves allowed between them.

This table is the one definition. The file mailbox refuses any move that is not in it, and the
reaper, the CLI, the docs and the tests read it from here.

::

    tmp ──publish──> new ──claim──> processing ──ack──> done
                      ^  \\                │   │
                      │   `──reject───┐    │   `──give_up──> dead
                      │     (expire)  v    │                  │
                      │              dead  `──nack──> new     │
                      `──────────────requeue──────────────────'

    Legacy Dream.OS messages (ingestion, `hybridcomms migrate`) enter by publish into new/, or by
    import into done/ (the old layout marked them processed) or dead/ (they cannot be converted).

    Recovery returns a dead owner's claim (lock free) through tmp/: processing/<name> is renamed to
    tmp/<name>.stolen, then into new/ (a watcher sees it arrive from tmp/<name>.stolen: "recovered").
    A hung owner's claim (lock held, lease expired) is taken by a steal: processing/<name> is
    renamed to tmp/<name>.stolen, a fresh copy (a new inode: the hung owner keeps its lock on the
    old one) atomically replaces it there, and that goes to new/ (or dead/ when its attempts are
    used up). At every instant the message is exactly one file.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["TRANSITIONS", "Move", "State", "Transition", "check_transition", "move"]


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
    RECOVER = "recover"  # processing -> tmp/<name>.stolen -> new: the owner died (its lock is free)
    GIVE_UP = "give_up"  # processing -> dead: attempts exhausted, or dead-lettered by the handler
    REJECT = "reject"  # new -> dead: undecodable, too large, a symlink, not a regular file
    EXPIRE = "expire"  # new -> dead: its `expires` passed before it was claimed (never handed out)
    REQUEUE = "requeue"  # dead -> new (or done -> new, a replay): an operator's decision
    STEAL = "steal"  # processing -> tmp/<name>.stolen (replaced by a fresh copy) -> new/ or dead/
    IMPORT = (
        "import"  # tmp -> done / dead: a legacy Dream.OS message taken over already processed, or unusable
    )


TRANSITIONS: dict[tuple[State, State], frozenset[Transition]] = {
    (State.NEW, State.PROCESSING): frozenset({Transition.CLAIM}),
    (State.NEW, State.DEAD): frozenset({Transition.REJECT, Transition.EXPIRE}),
    (State.PROCESSING, State.DONE): frozenset({Transition.ACK}),
    (State.PROCESSING, State.NEW): frozenset({Transition.NACK}),
    (State.PROCESSING, State.DEAD): frozenset({Transition.GIVE_UP}),
    (State.DEAD, State.NEW): frozenset({Transition.REQUEUE}),
    (State.DONE, State.NEW): frozenset({Transition.REQUEUE}),
    (State.PROCESSING, State.TMP): frozenset({Transition.RECOVER, Transition.STEAL}),
    (State.TMP, State.NEW): frozenset({Transition.PUBLISH, Transition.RECOVER, Transition.STEAL}),
    (State.TMP, State.DONE): frozenset({Transition.IMPORT}),
    (State.TMP, State.DEAD): frozenset({Transition.IMPORT, Transition.STEAL}),
}


def check_transition(src: State, dst: State, how: Transition) -> None:
    """Raise ``ValueError`` unless ``how`` is an allowed move from ``src`` to ``dst``."""
    allowed = TRANSITIONS.get((src, dst), frozenset())
    if how not in allowed:
        raise ValueError(f"{how.value}: no such move from {src.value}/ to {dst.value}/")


@dataclass(frozen=True, slots=True)
class Move:
    """One allowed move, checked against `TRANSITIONS` when it is made (at import time)."""

    src: State
    dst: State
    how: Transition
    src_folder: str
    dst_folder: str


def move(src: State, dst: State, how: Transition) -> Move:
    check_transition(src, dst, how)
    return Move(src, dst, how, src.folder, dst.folder)


# Every move the mailbox and the reaper make; code moves files only through these.
PUBLISH = move(State.TMP, State.NEW, Transition.PUBLISH)
CLAIM = move(State.NEW, State.PROCESSING, Transition.CLAIM)
REJECT = move(State.NEW, State.DEAD, Transition.REJECT)
EXPIRE = move(State.NEW, State.DEAD, Transition.EXPIRE)
ACK = move(State.PROCESSING, State.DONE, Transition.ACK)
NACK = move(State.PROCESSING, State.NEW, Transition.NACK)
RECOVER_DETACH = move(State.PROCESSING, State.TMP, Transition.RECOVER)
RECOVER_RETURN = move(State.TMP, State.NEW, Transition.RECOVER)
GIVE_UP = move(State.PROCESSING, State.DEAD, Transition.GIVE_UP)
REQUEUE_DEAD = move(State.DEAD, State.NEW, Transition.REQUEUE)
REQUEUE_DONE = move(State.DONE, State.NEW, Transition.REQUEUE)
STEAL_DETACH = move(State.PROCESSING, State.TMP, Transition.STEAL)
STEAL_RETURN = move(State.TMP, State.NEW, Transition.STEAL)
STEAL_BURY = move(State.TMP, State.DEAD, Transition.STEAL)
IMPORT_DONE = move(State.TMP, State.DONE, Transition.IMPORT)
IMPORT_DEAD = move(State.TMP, State.DEAD, Transition.IMPORT)
