"""Which of several auditor bots a new room gets (``rooms/seating.py``): a stable rule
that needs no table, shares the rooms out, moves no room but to a bot added to the
list, and never seats a second bot where the creation request invited one."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from synapse_police_policy.rooms.seating import (
    INVITED_AUDITOR,
    auditor_for,
    auditor_to_seat,
    note_invited_auditor,
)

BOTS = ("@auditor-1:police.example", "@auditor-2:police.example", "@auditor-3:police.example")
room_ids = st.text(min_size=1, max_size=40).map(lambda text: f"!{text}:police.example")
bot_lists = st.lists(
    st.from_regex(r"@auditor-[a-z0-9]{1,6}:police\.example", fullmatch=True),
    min_size=1,
    max_size=6,
    unique=True,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@given(room_ids, bot_lists, st.randoms())
def test_the_choice_is_one_of_the_bots_and_ignores_their_order(
    room_id: str, bots: list[str], random: Any
) -> None:
    chosen = auditor_for(room_id, bots)
    assert chosen in bots
    shuffled = list(bots)
    random.shuffle(shuffled)
    assert auditor_for(room_id, shuffled) == chosen


@given(room_ids, bot_lists, st.from_regex(r"@auditor-new[0-9]:police\.example", fullmatch=True))
def test_a_bot_added_to_the_list_takes_rooms_from_nobody_else(
    room_id: str, bots: list[str], new: str
) -> None:
    before = auditor_for(room_id, bots)
    assert auditor_for(room_id, [*bots, new]) in (before, new)


def test_the_rooms_are_shared_out_evenly() -> None:
    counts = Counter(auditor_for(f"!room{n}:police.example", BOTS) for n in range(3000))
    assert set(counts) == set(BOTS)
    assert all(800 <= count <= 1200 for count in counts.values()), counts


def test_no_bots_no_choice() -> None:
    with pytest.raises(ValueError):
        auditor_for("!room:police.example", ())
    assert auditor_to_seat("!room:police.example", {}, ()) is None


def test_the_invited_bot_is_the_rooms_bot() -> None:
    room_id = "!direct:police.example"
    other = next(bot for bot in BOTS if bot != auditor_for(room_id, BOTS))
    content = note_invited_auditor({}, ["@revisor:police.example", other], BOTS)
    assert content == {INVITED_AUDITOR: other}
    assert auditor_to_seat(room_id, content, BOTS) == other
    assert auditor_to_seat(room_id, {}, BOTS) == auditor_for(room_id, BOTS)


@given(st.dictionaries(st.text(max_size=12), json_values, max_size=4), json_values, json_values)
def test_a_client_never_names_the_rooms_bot(
    creation_content: dict[str, Any], invite: Any, claimed: Any
) -> None:
    """Whatever the client writes under the module's key is dropped; only an invited bot is noted."""
    content = note_invited_auditor({**creation_content, INVITED_AUDITOR: claimed}, invite, BOTS)
    invited = [user for user in invite if user in BOTS] if isinstance(invite, list) else []
    expected = {key: value for key, value in creation_content.items() if key != INVITED_AUDITOR}
    if invited:
        expected[INVITED_AUDITOR] = invited[0]
    assert content == expected


@given(room_ids, json_values)
def test_a_value_the_module_did_not_write_is_ignored(room_id: str, claimed: Any) -> None:
    """A create event written before the key existed, or by a client of a room upgrade."""
    if claimed in BOTS:
        return
    assert auditor_to_seat(room_id, {INVITED_AUDITOR: claimed}, BOTS) == auditor_for(room_id, BOTS)
