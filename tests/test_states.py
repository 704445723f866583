from __future__ import annotations

import pytest

from hybridcomms import TRANSITIONS, State, Transition
from hybridcomms.states import check_transition


def test_every_state_is_a_folder_of_the_on_disk_contract() -> None:
    assert {s.folder for s in State} == {"tmp", "new", "processing", "done", "dead"}


def test_the_allowed_moves_are_exactly_the_documented_ones() -> None:
    moves = {(src.value, dst.value, how.value) for (src, dst), hows in TRANSITIONS.items() for how in hows}
    assert moves == {
        ("tmp", "new", "publish"),
        ("new", "processing", "claim"),
        ("new", "dead", "reject"),
        ("new", "dead", "expire"),
        ("processing", "done", "ack"),
        ("processing", "new", "nack"),
        ("processing", "dead", "give_up"),
        ("dead", "new", "requeue"),
        ("done", "new", "requeue"),
        ("processing", "tmp", "steal"),
        ("tmp", "new", "steal"),
        ("tmp", "new", "recover"),
        ("processing", "tmp", "recover"),
        ("tmp", "dead", "steal"),
        ("tmp", "done", "import"),
        ("tmp", "dead", "import"),
    }


@pytest.mark.parametrize(
    ("src", "dst", "how"),
    [
        (State.DONE, State.DEAD, Transition.GIVE_UP),
        (State.NEW, State.DONE, Transition.ACK),
        (State.TMP, State.PROCESSING, Transition.CLAIM),
        (State.PROCESSING, State.NEW, Transition.REQUEUE),
    ],
)
def test_a_move_outside_the_table_is_refused(src: State, dst: State, how: Transition) -> None:
    with pytest.raises(ValueError, match="no such move"):
        check_transition(src, dst, how)
