"""The status board rendered from plain data: HTML table plus plain-text fallback."""

from __future__ import annotations

from bots.dispatch.board import MAX_NAMES, BoardData, age, render
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
    assert f"+{150 - MAX_NAMES} more" in plain
    assert len(plain.encode()) + len(rich.encode()) < 20_000


def test_age():
    assert age(NOW - 5, NOW) == "5 s ago"
    assert age(NOW - 61, NOW) == "1 min ago"
    assert age(NOW + 3, NOW) == "0 s ago"
