"""The status board rendered from plain data: HTML table plus plain-text fallback."""

from __future__ import annotations

import json

import attrs

from bots.dispatch.board import MAX_BOARD_BYTES, MAX_CELL, MAX_NAMES, BoardData, age, cell, render, size
from bots.dispatch.chat import rendered_notice, replacement
from bots.dispatch.config import Unit
from bots.dispatch.state import Addressee, AlertView, Incident

NOW = 1_800_000_000.0


def data(addressees=None, members=("@o1:x", "@o2:x")) -> BoardData:
    incident = Incident(
        7, "Einbruch <Juwelier>", 1, "Hauptstraße 5", "!inc", "!ctl", "@d:x", NOW - 600, None, ("alpha",)
    )
    people = addressees or (
        Addressee("@o1:x", ("alpha",), "!inc", NOW - 30, "✅"),
        Addressee("@o2:x", ("alpha",), "!inc", None, None),
    )
    alert = AlertView(3, 7, "!ctl", "@d:x", "Zugriff", NOW - 60, 60.0, NOW + 10, 1, False, tuple(people))
    return BoardData(
        incidents=[incident],
        units=[Unit("alpha", "Adler 1", tuple(members), "@sup:x")],
        statuses={"@o1:x": (4, NOW - 120)},
        locations={"@o2:x": ("geo:52.52,13.40", NOW - 7200)},
        alerts=[alert],
        label=lambda user: user[1:].split(":")[0],
    )


def test_board_shows_incidents_units_statuses_positions_and_acknowledgements():
    plain, rich = render(data(), NOW)
    assert plain.startswith("Dispatch board - updated ")
    assert "#7 | 1 | Einbruch <Juwelier> | Hauptstraße 5 | alpha" in plain
    assert "Adler 1 | o1 | 4 on scene (2 min ago)" in plain
    assert "geo:52.52,13.40 (2 h 0 min ago)" in plain
    assert "A3 (#7) | Zugriff | 1/2: o1" in plain and "(✅)" in plain
    assert "| o2 | re-alert" in plain
    assert rich.count("<table>") == 3
    assert "Einbruch &lt;Juwelier&gt;" in rich and "<Juwelier>" not in rich
    assert "<th>Acknowledged</th>" in rich


def test_empty_board():
    plain, rich = render(BoardData([], [], {}, {}, []), NOW)
    assert plain.count("none") == 3
    assert "<table>" not in rich


def test_hundreds_of_addressees_stay_small():
    members = tuple(f"@o{n}:x" for n in range(300))
    people = tuple(
        Addressee(m, ("alpha",), "!u", NOW - 1 if n % 2 else None, "✅") for n, m in enumerate(members)
    )
    plain, rich = render(data(people, members), NOW)
    assert "150/300" in plain
    for line in plain.splitlines():
        if line.startswith("  A3"):  # both lists: the names that fit, and how many more
            _, _, acked, missing, _ = line.split(" | ")
            for names, total in ((acked.split(": ", 1)[1], 150), (missing, 150)):
                shown, more = names.rsplit(" +", 1)
                assert len(shown.split(", ")) + int(more.split()[0]) == total
                assert len(shown.split(", ")) <= MAX_NAMES and len(names) <= MAX_CELL
    assert len(plain.encode()) + len(rich.encode()) < 20_000


def test_age():
    assert age(NOW - 5, NOW) == "5 s ago"
    assert age(NOW - 61, NOW) == "1 min ago"
    assert age(NOW + 3, NOW) == "0 s ago"


def edit_bytes(plain: str, rich: str) -> int:
    """The board edit as the homeserver gets it: the content (the board twice), encrypted
    (base64 of the JSON: a third more) with Megolm's envelope."""
    content = replacement("$board:x", rendered_notice(plain, rich))
    return len(json.dumps(content)) * 4 // 3 + 1_000


def test_a_cell_is_cut_with_an_ellipsis():
    assert cell("kurz") == "kurz"
    assert cell("a\nb  c") == "a b c"
    long = cell("x" * 1000)
    assert len(long) == MAX_CELL and long.endswith("…")


def test_a_huge_position_and_title_leave_the_board_small():
    huge = data()
    incident = attrs.evolve(huge.incidents[0], title="Großlage " + "ü" * 10_000, location="Weg " * 25_000)
    huge = attrs.evolve(huge, incidents=[incident], locations={"@o2:x": ("geo:52.5" + "0" * 100_000, NOW)})
    plain, rich = render(huge, NOW)
    assert size(plain, rich) <= MAX_BOARD_BYTES and edit_bytes(plain, rich) < 64 * 1024
    assert "Großlage üü" in plain and "geo:52.500" in plain and plain.count("…") >= 3
    assert max(len(line) for line in plain.splitlines()) < 5 * MAX_CELL


def test_the_oldest_rows_are_folded_into_a_count():
    people = (Addressee("@o1:x", ("alpha",), "!inc", None, None),)
    alerts = [
        AlertView(n, None, "!ctl", "@d:x", f"Alarm {n} " + "✅" * 400, NOW, 60.0, NOW, 1, False, people)
        for n in range(1, 301)
    ]
    incidents = [
        Incident(n, f"Einsatz {n} " + "ä" * 300, 2, "ü" * 300, None, "!ctl", "@d:x", NOW, None, ())
        for n in range(1, 101)
    ]
    plain, rich = render(attrs.evolve(data(), alerts=alerts, incidents=incidents), NOW)
    assert size(plain, rich) <= MAX_BOARD_BYTES and edit_bytes(plain, rich) < 64 * 1024
    folded = int(plain.split(" older alerts not shown")[0].rsplit("+", 1)[1])
    assert 0 < folded < 300
    assert "A300 | Alarm 300" in plain and "A1 | Alarm 1 " not in plain  # the newest stay
    assert "<i>+" in rich and "older alerts not shown" in rich
