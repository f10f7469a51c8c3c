"""Minimal stand-ins of Synapse's tables, as the module's retention queries
read them, for unit tests on plain SQLite."""

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
    "CREATE TABLE redactions (event_id TEXT NOT NULL, redacts TEXT NOT NULL)",
    "CREATE TABLE local_current_membership (room_id TEXT, user_id TEXT, membership TEXT)",
    "CREATE TABLE local_media_repository (media_id TEXT, created_ts BIGINT)",
    "CREATE TABLE profiles (user_id TEXT, avatar_url TEXT)",
    "CREATE TABLE room_stats_state (room_id TEXT, avatar TEXT)",
)
