"""What the archive indexes of an event (``bots/auditor/content.py``): the text Element shows."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bots.auditor.archive import Message
from bots.auditor.content import Described, Skip, canonical_json, describe, html_text, poll_answers


def shown(event_type: str, content: dict[str, Any], **kwargs: Any) -> Described:
    described = describe(event_type, content, **kwargs)
    assert isinstance(described, Described), described
    return described


def test_an_edit_is_indexed_by_its_new_content_and_linked_to_the_original() -> None:
    described = shown(
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "* ok, verstanden",
            "m.new_content": {"msgtype": "m.text", "body": "Treffpunkt Hafenbecken"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$original"},
        },
    )
    assert described.body == "Treffpunkt Hafenbecken"
    assert (described.relates_to, described.rel_type) == ("$original", "m.replace")
    assert json.loads(described.content)["body"] == "* ok, verstanden"


def test_html_is_indexed_as_the_text_it_renders_and_the_reply_fallback_is_left_out() -> None:
    described = shown(
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "> <@a:x> old words\n\nplain",
            "format": "org.matrix.custom.html",
            "formatted_body": "<mx-reply><blockquote>old words</blockquote></mx-reply>"
            "<p>Zeuge <b>Lindenhof</b> &amp; mehr</p><img alt='Pfeil'>",
            "m.relates_to": {"m.in_reply_to": {"event_id": "$quoted"}},
        },
    )
    assert "Lindenhof" in described.body and "& mehr" in described.body and "Pfeil" in described.body
    assert "old" not in described.body
    assert "plain" in described.body  # a word only in the plain body is searchable too
    assert (described.relates_to, described.rel_type) == ("$quoted", "m.in_reply_to")
    assert html_text("<p>a</p><p>b<br>c</p>") == "a\nb\nc"


def test_a_location_is_indexed_by_its_description_and_uri() -> None:
    described = shown(
        "m.room.message",
        {
            "msgtype": "m.location",
            "body": "Standort",
            "geo_uri": "geo:52.5,13.4",
            "org.matrix.msc3488.location": {"uri": "geo:52.5,13.4", "description": "Kiosk Nordufer"},
        },
    )
    assert described.msgtype == "m.location"
    assert "Nordufer" in described.body and "geo:52.5,13.4" in described.body


UNSTABLE_POLL = {
    "org.matrix.msc3381.poll.start": {
        "kind": "org.matrix.msc3381.poll.disclosed",
        "question": {"org.matrix.msc1767.text": "Wer fährt?"},
        "answers": [
            {"id": "a1", "org.matrix.msc1767.text": "Streife Birke"},
            {"id": "a2", "org.matrix.msc1767.text": "Streife Eiche"},
        ],
    },
    "org.matrix.msc1767.text": "Wer fährt?\n1. Streife Birke\n2. Streife Eiche",
}
STABLE_POLL = {
    "m.poll": {
        "question": {"m.text": [{"body": "Wohin?"}]},
        "answers": [{"m.id": "x", "m.text": [{"body": "Bahnhof"}]}],
    },
    "m.text": [{"body": "Wohin? Bahnhof"}],
}


def test_polls_in_both_forms_are_indexed_by_question_answers_choices_and_results() -> None:
    start = shown("org.matrix.msc3381.poll.start", UNSTABLE_POLL)
    assert "Wer fährt?" in start.body and "Streife Eiche" in start.body
    assert shown("m.poll.start", STABLE_POLL).body == "Wohin?\nBahnhof"
    assert poll_answers("m.poll.start", STABLE_POLL) == {"x": "Bahnhof"}
    answers = poll_answers("org.matrix.msc3381.poll.start", UNSTABLE_POLL)
    response = shown(
        "org.matrix.msc3381.poll.response",
        {
            "org.matrix.msc3381.poll.response": {"answers": ["a2"]},
            "m.relates_to": {"rel_type": "m.reference", "event_id": "$poll"},
        },
        answers_of=lambda event_id: answers if event_id == "$poll" else None,
    )
    assert response.body == "Streife Eiche"
    assert (response.relates_to, response.rel_type) == ("$poll", "m.reference")
    unknown = shown("m.poll.response", {"m.selections": ["x"], "m.relates_to": {}})
    assert unknown.body == "x"
    end = shown(
        "m.poll.end",
        {"m.text": [{"body": "Die Umfrage ist beendet"}], "m.poll.results": {"x": 3}},
    )
    assert "beendet" in end.body and "x: 3" in end.body


def test_stickers_and_attachments_name_their_media_encrypted_or_not() -> None:
    plain = shown(
        "m.sticker", {"body": "Daumen hoch", "url": "mxc://x/abc", "info": {"mimetype": "image/png"}}
    )
    assert plain.body == "Daumen hoch" and plain.media is not None and plain.media.encrypted is None
    file = {"url": "mxc://x/enc", "key": {"k": "k"}, "iv": "iv", "hashes": {"sha256": "h"}, "v": "v2"}
    encrypted = shown("m.sticker", {"body": "Winken", "file": file, "info": {}})
    assert encrypted.media is not None and encrypted.media.url == "mxc://x/enc" and encrypted.media.encrypted
    assert shown("m.room.message", {"msgtype": "m.text", "body": "x"}).media is None


def test_custom_types_and_msgtypes_are_kept_with_their_body() -> None:
    custom = shown("m.room.message", {"msgtype": "de.polizei.lage", "body": "Lage ruhig"})
    assert (custom.msgtype, custom.body) == ("de.polizei.lage", "Lage ruhig")
    other = shown("de.polizei.note", {"m.text": [{"mimetype": "text/html", "body": "<b>fett</b>"}]})
    assert other.body == "fett"
    assert (
        shown(
            "m.reaction", {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$e", "key": "👍"}}
        ).body
        == "👍"
    )


def test_what_is_not_a_message_is_skipped_with_a_reason() -> None:
    assert isinstance(describe("m.room.redaction", {"redacts": "$x"}), Skip)
    assert isinstance(describe("m.room.member", {"membership": "join"}, state_key="@a:x"), Skip)
    assert isinstance(describe("m.room.message", {}), Skip)
    assert isinstance(describe(None, {"body": "x"}), Skip)
    assert isinstance(describe("m.room.message", ["not", "an", "object"]), Skip)


def test_the_content_is_canonical_json() -> None:
    assert canonical_json({"b": 1, "a": "ü", "n": float("nan")}) == '{"a":"ü","b":1,"n":null}'


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=20), children, max_size=5)
    ),
    max_leaves=30,
)
KEYS = st.sampled_from(
    [
        "body",
        "msgtype",
        "format",
        "formatted_body",
        "m.new_content",
        "m.relates_to",
        "m.in_reply_to",
        "event_id",
        "rel_type",
        "geo_uri",
        "org.matrix.msc3488.location",
        "org.matrix.msc3381.poll.start",
        "org.matrix.msc3381.poll.response",
        "m.poll",
        "m.selections",
        "m.text",
        "org.matrix.msc1767.text",
        "question",
        "answers",
        "url",
        "file",
        "info",
        "m.poll.results",
        "key",
    ]
)
CONTENT = st.recursive(
    JSON,
    lambda children: st.dictionaries(KEYS | st.text(max_size=10), children, max_size=6),
    max_leaves=40,
)
TYPES = (
    st.sampled_from(
        [
            "m.room.message",
            "m.sticker",
            "m.reaction",
            "m.poll.start",
            "m.poll.response",
            "m.poll.end",
            "org.matrix.msc3381.poll.start",
            "org.matrix.msc3381.poll.response",
            "org.matrix.msc3381.poll.end",
            "m.room.redaction",
            "m.room.encrypted",
        ]
    )
    | JSON
)


@settings(max_examples=200, deadline=None)
@given(TYPES, CONTENT, st.none() | st.text(max_size=5))
def test_any_json_yields_a_message_or_a_clear_skip(event_type: Any, content: Any, state_key: Any) -> None:
    described = describe(event_type, content, state_key=state_key, answers_of=lambda _event_id: {"a": "b"})
    if isinstance(described, Skip):
        assert described.reason
        return
    assert isinstance(described, Described)
    assert isinstance(described.body, str)
    assert described.relates_to is None or isinstance(described.relates_to, str)
    assert described.rel_type is None or isinstance(described.rel_type, str)
    assert described.msgtype is None or isinstance(described.msgtype, str)
    assert isinstance(json.loads(described.content), dict)
    # and the archive takes it as it is
    Message(
        "$e",
        "!r:x",
        "@a:x",
        None,
        0,
        described.body,
        event_type=described.event_type,
        msgtype=described.msgtype,
        content=described.content,
        relates_to=described.relates_to,
        rel_type=described.rel_type,
    )


@given(st.text())
def test_any_html_has_a_text(html: str) -> None:
    assert isinstance(html_text(html), str)
