"""The status board: open incidents, units and their status, open alerts (pure).

Element renders ``formatted_body`` (an HTML table); other clients show the
plain-text fallback. The board stays well below Synapse's 64 KiB event limit
whatever it holds (an edit carries it twice, encryption adds a third): every
cell is cut at ``MAX_CELL`` characters (marked "…"), long lists of names at
``MAX_NAMES``, and when the whole is still above ``MAX_BOARD_BYTES`` the oldest
rows are folded into a count (of alerts and incidents, from whichever has
more; the last unit rows only after them). A 100 KB position or title never
stops an update.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, tzinfo

import attrs

from .clock import clock, clock_zoned
from .commands import STATUS_CODES
from .config import Unit
from .state import AlertView, Incident

#: names listed per cell before "+N more"
MAX_NAMES = 12
#: members listed per unit before a summary line
MAX_MEMBERS = 25
#: characters per cell; a longer value is cut and ends in ELLIPSIS
MAX_CELL = 160
ELLIPSIS = "…"
#: the plain text and the HTML together, as JSON with non-ASCII escaped (the edit carries both
#: twice, and the ciphertext is a third larger: about 54 KB of the 64 KiB at most)
MAX_BOARD_BYTES = 20_000


@attrs.frozen
class BoardData:
    incidents: Sequence[Incident]
    units: Sequence[Unit]
    #: user -> (status code, since)
    statuses: Mapping[str, tuple[int, float]]
    #: user -> (geo URI, when)
    locations: Mapping[str, tuple[str, float]]
    alerts: Sequence[AlertView]
    #: user ID -> short name for the board
    label: Callable[[str], str] = lambda user_id: user_id
    #: the zone of the board's times (``Config.timezone``); its title names it
    zone: tzinfo = UTC


def age(at: float, now: float) -> str:
    seconds = max(0, int(now - at))
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min ago"


def cell(text: str, limit: int = MAX_CELL) -> str:
    """``text`` of at most ``limit`` characters (one line); a longer one is cut, marked with "…"."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - len(ELLIPSIS)] + ELLIPSIS


def _cut(names: list[str]) -> str:
    """At most ``MAX_NAMES`` names, as many as fit in a cell, and how many more there are."""
    if not names:
        return "-"
    shown: list[str] = []
    for name in names[:MAX_NAMES]:
        rest = len(names) - len(shown) - 1
        if len(", ".join([*shown, name]) + (f" +{rest} more" if rest else "")) > MAX_CELL:
            break
        shown.append(name)
    if not shown:  # one very long name: cut, so the count still shows
        shown = [cell(names[0], MAX_CELL // 2)]
    rest = len(names) - len(shown)
    return ", ".join(shown) + (f" +{rest} more" if rest else "")


def _rows(data: BoardData, now: float) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    incidents = [
        [f"#{i.id}", str(i.prio), i.title, i.location or "-", ", ".join(i.units) or "-"]
        for i in data.incidents
    ]
    on_incident = {unit: f"#{i.id}" for i in data.incidents for unit in i.units}
    units: list[list[str]] = []
    for unit in data.units:
        for index, member in enumerate(unit.members):
            if index == MAX_MEMBERS:
                counts: dict[int, int] = {}
                for other in unit.members[MAX_MEMBERS:]:
                    code = data.statuses.get(other, (-1, 0.0))[0]
                    counts[code] = counts.get(code, 0) + 1
                summary = ", ".join(f"{n}x {c if c >= 0 else '?'}" for c, n in sorted(counts.items()))
                units.append([unit.call_sign, f"+{len(unit.members) - MAX_MEMBERS} more", summary, "", ""])
                break
            status = data.statuses.get(member)
            location = data.locations.get(member)
            units.append(
                [
                    unit.call_sign if index == 0 else "",
                    data.label(member),
                    f"{status[0]} {STATUS_CODES[status[0]]} ({age(status[1], now)})" if status else "-",
                    f"{location[0]} ({age(location[1], now)})" if location else "-",
                    on_incident.get(unit.name, "") if index == 0 else "",
                ]
            )
    alerts: list[list[str]] = []
    for alert in data.alerts:
        acked = [
            f"{data.label(a.user_id)} {clock(a.acked_at, data.zone)} ({a.via})"
            for a in sorted(alert.acknowledged, key=lambda a: a.acked_at or 0)
            if a.acked_at is not None
        ]
        missing = [data.label(a.user_id) for a in alert.missing]
        next_step = (
            f"re-alert {clock(alert.due_at, data.zone)}"
            if alert.due_at and missing
            else ("escalated" if missing else "")
        )
        alerts.append(
            [
                f"A{alert.id}" + (f" (#{alert.incident_id})" if alert.incident_id else ""),
                alert.text,
                f"{len(acked)}/{len(alert.addressees)}: {_cut(acked)}",
                _cut(missing),
                next_step,
            ]
        )
    return incidents, units, alerts


SECTIONS = (
    ("Open incidents", ("#", "Prio", "Title", "Location", "Units")),
    ("Units", ("Unit", "Member", "Status", "Position", "Incident")),
    ("Alerts", ("Alert", "Text", "Acknowledged", "Missing", "Next")),
)
#: what a folded row is called in the count that replaces it
FOLDED = ("older incidents", "more unit rows", "older alerts")


@attrs.define
class _Section:
    name: str
    header: tuple[str, ...]
    rows: list[list[str]]
    #: rows left out (their count is shown instead)
    folded: int = 0
    #: which rows go first: the oldest (incidents and alerts) or the last (units)
    oldest_first: bool = True
    what: str = ""

    def fold_one(self) -> int:
        """Leave out the oldest row (or the last); what it weighed (see ``size``)."""
        if self.oldest_first:
            index = min(range(len(self.rows)), key=lambda i: _number(self.rows[i][0]))
        else:
            index = len(self.rows) - 1
        row = self.rows.pop(index)
        self.folded += 1
        return _row_size(row)


def _number(label: str) -> int:
    """The number in '#7' or 'A3 (#7)': the lower, the older."""
    digits = "".join(ch for ch in label.split(" ", 1)[0] if ch.isdigit())
    return int(digits) if digits else 0


def _render(title: str, sections: list[_Section]) -> tuple[str, str]:
    plain = [title]
    parts = [f"<h4>{html.escape(title)}</h4>"]
    for section in sections:
        plain.append(f"\n{section.name}:")
        parts.append(f"<p><b>{html.escape(section.name)}</b></p>")
        if not section.rows and not section.folded:
            plain.append("  none")
            parts.append("<p>none</p>")
            continue
        if section.rows:
            plain.extend("  " + " | ".join(cell for cell in row if cell) for row in section.rows)
            head = "".join(f"<th>{html.escape(cell)}</th>" for cell in section.header)
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
                for row in section.rows
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        if section.folded:
            note = f"+{section.folded} {section.what} not shown"
            plain.append(f"  {note}")
            parts.append(f"<p><i>{html.escape(note)}</i></p>")
    return "\n".join(plain), "".join(parts)


def size(plain: str, rich: str) -> int:
    """What the board weighs: both texts as JSON with non-ASCII escaped."""
    return len(json.dumps(plain)) + len(json.dumps(rich))


def _row_size(row: list[str]) -> int:
    """What a row adds to ``size``: its plain line and its HTML row."""
    line = "  " + " | ".join(cell for cell in row if cell)
    html_row = "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
    return len(json.dumps(line)) + len(json.dumps(html_row))


def render(data: BoardData, now: float, budget: int = MAX_BOARD_BYTES) -> tuple[str, str]:
    """The board as (plain text, HTML), at most ``budget`` (see ``size``): over it, the oldest
    rows of whichever of alerts and incidents has more are folded first, the last unit rows
    only when neither has any left."""
    title = f"Dispatch board - updated {clock_zoned(now, data.zone)}"
    incidents, units, alerts = ([[cell(value) for value in row] for row in rows] for rows in _rows(data, now))
    sections = [
        _Section(*SECTIONS[0], incidents, what=FOLDED[0]),
        _Section(*SECTIONS[1], units, oldest_first=False, what=FOLDED[1]),
        _Section(*SECTIONS[2], alerts, what=FOLDED[2]),
    ]
    incident_rows, unit_rows, alert_rows = sections
    plain, rich = _render(title, sections)
    while size(plain, rich) > budget and any(section.rows for section in sections):
        excess = size(plain, rich) - budget
        while excess > 0:  # fold by the rows' weights, then measure the whole again
            if alert_rows.rows or incident_rows.rows:
                section = alert_rows if len(alert_rows.rows) >= len(incident_rows.rows) else incident_rows
            elif unit_rows.rows:
                section = unit_rows
            else:
                break
            excess -= section.fold_one()
        plain, rich = _render(title, sections)
    return plain, rich
