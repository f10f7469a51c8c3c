"""Fixtures shared by the unit tests of the module's store code."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest


@pytest.fixture
def db() -> Iterator[sqlite3.Connection]:
    """A throwaway in-memory SQLite database."""
    connection = sqlite3.connect(":memory:")
    yield connection
    connection.close()
