"""What the contract's calls return, the same on every backend: ``put``/``put_many`` the message ids,
``nack`` the state it reached, ``kind`` the backend `open_mailbox` names (run over every backend by
the ``make`` fixture of the contract suite, tests/contract/conftest.py)."""

from __future__ import annotations

import os
from collections.abc import Callable

from hybridcomms import Message, State
from hybridcomms.backends import KINDS, Mailbox


def test_put_and_put_many_return_the_ids_in_order(make: Callable[..., Mailbox]) -> None:
    mb = make()
    assert mb.put(Message("t", 0, id="one")) == "one"
    msgs = [Message("t", i, id=f"m{i}") for i in range(3)]
    assert mb.put_many(msgs) == ["m0", "m1", "m2"]
    assert mb.put_many([Message("t", 9, id="later")], delay=60) == ["later"]
    assert mb.put_many([]) == []


def test_nack_returns_the_state_it_reached(make: Callable[..., Mailbox]) -> None:
    mb = make(max_attempts=2)
    mb.put(Message("t", 1, id="x"))
    first = mb.claim()
    assert first is not None
    assert first.nack(delay=0, error="boom") is State.NEW
    second = mb.claim()
    assert second is not None and second.attempt == 2
    assert second.nack(delay=0, error="boom again") is State.DEAD
    info = mb.get("x")
    assert info is not None and info.state is State.DEAD


def test_every_mailbox_says_its_kind(make: Callable[..., Mailbox]) -> None:
    mb = make()
    assert mb.kind in KINDS
    assert isinstance(mb, Mailbox)


def test_requeue_all_moves_every_dead_message_back_and_counts_its_steps(make: Callable[..., Mailbox]) -> None:
    mb = make(max_attempts=1)
    mb.put_many([Message("t", i, id=f"d{i}") for i in range(5)])
    for _ in range(5):
        d = mb.claim()
        assert d is not None
        assert d.nack(delay=0, error="boom") is State.DEAD
    steps: list[int] = []
    moved = mb.requeue_all(State.DEAD, step=steps.append)
    assert len(moved) == 5 and steps and steps[-1] == 5
    assert mb.stats().states[State.DEAD].count == 0
    infos = [mb.get(f"d{i}") for i in range(5)]
    assert all(i is not None and i.state is State.NEW and i.attempt == 0 for i in infos)
    assert mb.requeue_all(State.DEAD) == []  # nothing left: nothing moved


def test_a_sibling_is_another_agent_on_the_same_backend(make: Callable[..., Mailbox]) -> None:
    """Where a reply goes back: the same root, store or server and namespace, the same options."""
    mb = make("Worker", max_attempts=3)
    reply_to = make("Client")
    with mb.sibling("Client") as back:
        assert back.kind == mb.kind and back.agent_id == "Client" and back.max_attempts == 3
        back.put(Message("reply", {"ok": True}, id="r1"))
    d = reply_to.claim()
    assert d is not None and d.message.id == "r1"
    d.ack()


def test_folder_is_where_the_messages_are_files_or_none(make: Callable[..., Mailbox]) -> None:
    """``folder``: the folder a mailbox lives in, its messages files under it; None where messages are
    not files (and then no message says it has a path)."""
    mb = make()
    mb.put(Message("t", 1, id="f1"))
    info = mb.get("f1")
    assert info is not None
    if mb.folder is None:
        assert info.path is None
    else:
        assert mb.folder.is_dir()
        assert info.path is not None and info.path.is_file() and info.path.is_relative_to(mb.folder)


def test_shared_says_whether_another_process_reaches_the_mailbox(make: Callable[..., Mailbox]) -> None:
    """``shared``: a message put by another process (a forked child, through its own opening of the
    same mailbox) reaches this one exactly when the mailbox says it is shared."""
    mb = make()
    pid = os.fork()
    if pid == 0:  # the child: its own opening of the mailbox, one put, out without cleanup
        code = 1
        try:
            with mb.sibling(mb.agent_id) as other:
                other.put(Message("t", "from the child", id="child"))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (mb.get("child") is not None) is mb.shared
