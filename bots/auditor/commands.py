"""The auditor's commands, by concern (this module only gathers their names):

* ``parser``: text in, a typed command out (pure), and the help from the usages;
* ``runner``: who may run what, what is logged, what is answered;
* ``replies``: how answers read (text and HTML) and the health the bot reports;
* ``requests``: the one record of a four-eyes export request, from request to delivery;
* ``chat``: the Matrix side of commands: which rooms may get answers, delivering bundles.
"""

from __future__ import annotations

from .parser import (
    COMMANDS,
    HELP,
    Approve,
    Command,
    Deny,
    Export,
    Health,
    Help,
    Invalid,
    LogView,
    More,
    Search,
    Show,
    parse_command,
)
from .replies import Delivery, HealthStats, Reply
from .requests import ExportRequest, ExportStore, Status
from .runner import LOG_ENTRIES, PAGE_SIZE, BuiltExport, CommandRunner, ExportJob

__all__ = [
    "COMMANDS",
    "HELP",
    "LOG_ENTRIES",
    "PAGE_SIZE",
    "Approve",
    "BuiltExport",
    "Command",
    "CommandRunner",
    "Delivery",
    "Deny",
    "Export",
    "ExportJob",
    "ExportRequest",
    "ExportStore",
    "Health",
    "HealthStats",
    "Help",
    "Invalid",
    "LogView",
    "More",
    "Reply",
    "Search",
    "Show",
    "Status",
    "parse_command",
]
