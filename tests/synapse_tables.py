"""Minimal stand-ins of Synapse's tables, as the module's retention queries
read and write them, for unit tests on plain SQLite."""

from __future__ import annotations

SYNAPSE_TABLES = (
    """CREATE TABLE events (
        stream_ordering INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL,
        type TEXT NOT NULL,
        room_id TEXT NOT NULL,
        state_key TEXT,
        outlier BOOL NOT NULL,
        rejection_reason TEXT,
        received_ts BIGINT,
        sender TEXT
    )""",
    "CREATE TABLE event_json (event_id TEXT NOT NULL, json TEXT NOT NULL)",
    "CREATE TABLE event_search (event_id TEXT, room_id TEXT, key TEXT, value TEXT)",
    """CREATE TABLE redactions (
        event_id TEXT NOT NULL, redacts TEXT NOT NULL, have_censored BOOL NOT NULL DEFAULT false
    )""",
    "CREATE TABLE current_state_events (event_id TEXT, room_id TEXT, type TEXT, state_key TEXT)",
    """CREATE TABLE current_state_delta_stream (
        stream_id BIGINT NOT NULL, room_id TEXT, type TEXT, state_key TEXT, event_id TEXT, prev_event_id TEXT
    )""",
    """CREATE TABLE room_memberships (
        event_id TEXT, user_id TEXT, room_id TEXT, membership TEXT, display_name TEXT, avatar_url TEXT
    )""",
    "CREATE TABLE local_current_membership (room_id TEXT, user_id TEXT, membership TEXT)",
    "CREATE TABLE local_media_repository (media_id TEXT, created_ts BIGINT)",
    "CREATE TABLE profiles (user_id TEXT, avatar_url TEXT, displayname TEXT)",
    "CREATE TABLE room_stats_state (room_id TEXT, avatar TEXT, name TEXT)",
    "CREATE TABLE sliding_sync_membership_snapshots (room_id TEXT, user_id TEXT, room_name TEXT)",
    "CREATE TABLE device_inbox (user_id TEXT, device_id TEXT, stream_id BIGINT, message_json TEXT)",
    """CREATE TABLE device_federation_outbox (
        destination TEXT, stream_id BIGINT, queued_ts BIGINT, messages_json TEXT
    )""",
    "CREATE TABLE room_aliases (room_alias TEXT, room_id TEXT)",
    "CREATE TABLE devices (user_id TEXT, device_id TEXT, display_name TEXT)",
)
