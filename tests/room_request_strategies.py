"""Hypothesis strategies for the input surface of /createRoom: what a client
may put into ``initial_state`` (odd types, state keys, unicode, nesting),
``preset``, ``visibility``, ``power_level_content_override``,
``creation_content`` and ``room_version``; and the room sections of the
module's config."""

from __future__ import annotations

from hypothesis import strategies as st

from synapse_police_policy.config import MEGOLM, RoomsConfig

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
#: values past Synapse's event size limit (65,536 bytes), cheap to generate
HUGE = st.integers(min_value=30_000, max_value=70_000).map(lambda n: "\u00fc" * n)
JSON = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
POLICY_TYPES = ["m.room.join_rules", "m.room.guest_access", "m.room.history_visibility", "m.room.encryption"]
STATE_TYPES = st.sampled_from(
    [*POLICY_TYPES, "m.room.power_levels", "m.room.name", "m.space.parent"]
) | st.text(max_size=30)
POLICY_VALUES = st.sampled_from(
    [
        "invite", "public", "knock", "restricted", "knock_restricted", "private", "can_join", "forbidden",
        "world_readable", "shared", "joined", "invited", MEGOLM, "m.olm.v1.curve25519-aes-sha2", "",
    ]
)  # fmt: skip
CONTENTS = (
    st.fixed_dictionaries(
        {},
        optional={
            "join_rule": POLICY_VALUES | JSON | HUGE,
            "guest_access": POLICY_VALUES | JSON,
            "history_visibility": POLICY_VALUES | JSON,
            "algorithm": POLICY_VALUES | JSON | HUGE,
            "allow": JSON,
            "users": st.dictionaries(st.text(max_size=20), JSON, max_size=3) | JSON,
            "redact": JSON,
        },
    )
    | JSON
)
ENTRIES = (
    st.fixed_dictionaries(
        {"type": STATE_TYPES | JSON},
        optional={"state_key": st.sampled_from(["", " ", "x", "@a:hs.test"]) | JSON, "content": CONTENTS},
    )
    | JSON
)
REQUESTS = st.fixed_dictionaries(
    {},
    optional={
        "initial_state": st.lists(ENTRIES, max_size=6) | JSON,
        "preset": st.sampled_from(["private_chat", "trusted_private_chat", "public_chat", "", "x"]) | JSON,
        "visibility": st.sampled_from(["private", "public", "PUBLIC", ""]) | JSON,
        "power_level_content_override": st.fixed_dictionaries({}, optional={"users": JSON, "events": JSON})
        | JSON,
        "creation_content": st.fixed_dictionaries({}, optional={"type": JSON, "m.federate": JSON}) | JSON,
        "room_version": st.sampled_from(["10", "11", "12", "1"]) | JSON,
        "is_direct": JSON,
        "name": st.text(max_size=20) | HUGE,
    },
)
#: requests a client that knows the API could send: well-formed entries, known
#: presets, but any values of the settings the policy governs
CANONICAL_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53 - 1), 2**53 - 1) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=3)
    ),
    max_leaves=8,
)
CONTENT_OBJECTS = st.fixed_dictionaries(
    {},
    optional={
        "join_rule": POLICY_VALUES | CANONICAL_JSON,
        "guest_access": POLICY_VALUES | CANONICAL_JSON,
        "history_visibility": POLICY_VALUES | CANONICAL_JSON,
        "algorithm": POLICY_VALUES | CANONICAL_JSON,
        "allow": CANONICAL_JSON,
        "name": st.text(max_size=20),
    },
)
WELL_FORMED_REQUESTS = st.fixed_dictionaries(
    {
        "initial_state": st.lists(
            st.fixed_dictionaries(
                {
                    "type": st.sampled_from([*POLICY_TYPES, "m.room.name", "m.space.parent"]),
                    "content": CONTENT_OBJECTS,
                },
                optional={"state_key": st.sampled_from(["", "x"])},
            ),
            max_size=6,
        )
    },
    optional={
        "preset": st.sampled_from(["private_chat", "trusted_private_chat", "public_chat"]),
        "visibility": st.sampled_from(["private", "public"]),
        "power_level_content_override": st.fixed_dictionaries(
            {}, optional={"events_default": st.integers(0, 100), "invite": st.integers(0, 100)}
        ),
        "creation_content": st.fixed_dictionaries(
            {}, optional={"type": st.sampled_from(["m.space", "io.element.video"])}
        ),
        "name": st.text(max_size=20),
        "room_version": st.sampled_from(["1", "5", "6", "10", "11", "12"]),
    },
)
CONFIGS = st.builds(
    RoomsConfig,
    allowed_join_rules=st.sets(st.sampled_from(["knock", "restricted", "knock_restricted"])).map(
        lambda rules: frozenset({"invite", *rules})
    ),
    default_history_visibility=st.sampled_from(["shared", "invited", "joined"]),
)

# --- clear text ---------------------------------------------------------------

#: event types a client may send: the known ones (allowed in clear or not) and any text
EVENT_TYPES = st.sampled_from(
    [
        "m.room.message", "m.room.encrypted", "m.reaction", "m.room.redaction", "m.sticker",
        "m.room.name", "m.room.topic", "m.room.member", "m.room.power_levels", "m.room.create",
        "m.space.child", "m.room.pinned_events", "m.room.retention", "io.element.functional_members",
        "im.vector.modular.widgets", "com.example.chat", "com.example.note",
        *POLICY_TYPES,
    ]
) | st.text(max_size=40)  # fmt: skip
#: None for a non-state event
STATE_KEYS = st.none() | st.sampled_from(["", "x", "@a:hs.test", "!r:hs.test"]) | st.text(max_size=20)
EVENT_CONTENTS = st.dictionaries(st.text(max_size=12), CANONICAL_JSON, max_size=3)
CLEAR_CONFIGS = st.builds(
    RoomsConfig,
    refuse_unencrypted_messages=st.booleans(),
    clear_event_types=st.frozensets(EVENT_TYPES, max_size=3),
    clear_state_types=st.frozensets(EVENT_TYPES, max_size=5),
)

# --- power levels at creation ------------------------------------------------------

#: levels Synapse accepts from room version 10 on (integers), hostile ones included
LEVELS = st.sampled_from([0, 50, 99, 100, 101, 1000]) | st.integers(-(2**53 - 1), 2**53 - 1)


def power_levels(users: list[str]) -> st.SearchStrategy[dict]:
    """``m.room.power_levels`` content a creator might send to keep the service
    users out: any of ``users`` at any level, and any levels for redacting,
    inviting, kicking and sending."""
    return st.fixed_dictionaries(
        {},
        optional={
            "users": st.dictionaries(st.sampled_from(users), LEVELS, max_size=len(users)),
            "users_default": LEVELS,
            "redact": LEVELS,
            "invite": LEVELS,
            "kick": LEVELS,
            "ban": LEVELS,
            "events_default": LEVELS,
            "state_default": LEVELS,
            "events": st.dictionaries(
                st.sampled_from(["m.room.redaction", "m.room.power_levels", "m.room.member"]), LEVELS
            ),
        },
    )
