"""The status board: open incidents, units and their status, open alerts (pure).

Element renders ``formatted_body`` (an HTML table); other clients show the
plain-text fallback. Long lists are cut, so the board stays well below the
64 KiB event limit even with hundreds of addressees (the edit carries it twice).
"""

from __future__ import annotations

import html
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


def _cut(names: list[str]) -> str:
    if len(names) <= MAX_NAMES:
        return ", ".join(names) or "-"
    return ", ".join(names[:MAX_NAMES]) + f" +{len(names) - MAX_NAMES} more"


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


def render(data: BoardData, now: float) -> tuple[str, str]:
    """The board as (plain text, HTML)."""
    title = f"Dispatch board - updated {clock_zoned(now, data.zone)}"
    plain = [title]
    parts = [f"<h4>{html.escape(title)}</h4>"]
    for (name, header), rows in zip(SECTIONS, _rows(data, now), strict=True):
        plain.append(f"\n{name}:")
        parts.append(f"<p><b>{html.escape(name)}</b></p>")
        if not rows:
            plain.append("  none")
            parts.append("<p>none</p>")
            continue
        plain.extend("  " + " | ".join(cell for cell in row if cell) for row in rows)
        head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
        )
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    return "\n".join(plain), "".join(parts)
