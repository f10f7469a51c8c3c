"""The module's wire contract, written once: where its HTTP resources live, the states
they report, what a login request's ID looks like, and the name Synapse loads it by.

The admin API, the login page, the ``police-policy devices`` client, the auditor bot
and the tests all read it from here. Nothing in it imports Synapse.
"""

from __future__ import annotations

import re

#: what ``modules: - module:`` names in homeserver.yaml
MODULE_NAME = "synapse_police_policy.PolicePolicy"

#: the admin API for the MDM and operators (``devices/admin_api.py``)
ADMIN_PREFIX = "/_synapse/client/police/v1"
#: the page an operator opens from a login request's link (``devices/login_page.py``)
LOGIN_PAGE_PREFIX = "/_synapse/client/police/login-request"

#: the states of an enrolled device
ENROLLED = "enrolled"
REVOKED = "revoked"
EXPIRED = "expired"
ENROLLMENT_STATES = (ENROLLED, REVOKED, EXPIRED)

#: the states of a login request waiting for an operator (EXPIRED too)
OPEN = "open"
APPROVED = "approved"
REJECTED = "rejected"
CONSUMED = "consumed"
PENDING_STATES = (OPEN, APPROVED, REJECTED, CONSUMED, EXPIRED)

#: a login request's ID: ``ABCD-2345``, no 0/O or 1/I to misread on the phone
REQUEST_ID_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
REQUEST_ID = re.compile(r"[A-Z0-9]{4}-[A-Z0-9]{4}")


def login_link(public_baseurl: str, token: str) -> str:
    """The link to a login request's page, as the refused phone shows it."""
    return f"{public_baseurl.rstrip('/')}{LOGIN_PAGE_PREFIX}/{token}"
