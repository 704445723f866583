"""What is printed for people is inert: nothing a producer writes can move the cursor, clear the
screen, reorder the text or forge a line on an operator's terminal."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hybridcomms import Message, MessageError
from hybridcomms.message import valid_topic

ACTIVE = st.characters(codec=None, categories=("Cc", "Cf", "Cs", "Co", "Zl", "Zp"))


@given(head=st.text(max_size=20), bad=ACTIVE, tail=st.text(max_size=20))
def test_a_topic_with_a_control_or_formatting_character_is_refused(head: str, bad: str, tail: str) -> None:
    topic = head[:100] + bad + tail[:100]
    with pytest.raises(MessageError):
        Message(topic)
    assert not valid_topic(topic)


@given(st.text(st.characters(categories=("L", "M", "N", "P", "S")), min_size=1, max_size=200))
def test_a_topic_of_printable_text_is_accepted(topic: str) -> None:
    assert Message(topic).topic == topic and valid_topic(topic)
    assert Message(f"a {topic}").topic == f"a {topic}"  # spaces too
