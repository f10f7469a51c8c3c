"""Parsing the dispatch commands: typed commands out, or a short answer that says how to write it."""

from __future__ import annotations

import pytest

from bots.dispatch.commands import (
    HELP,
    Alert,
    Assign,
    Close,
    Handover,
    Help,
    IncidentNew,
    Invalid,
    Log,
    OfficerStatus,
    Release,
    Sitrep,
    Status,
    is_ack_reaction,
    is_acknowledgement,
    parse_command,
    split_options,
)


def test_ordinary_text_is_no_command():
    assert parse_command("hello !status") is None
    assert parse_command("") is None
    assert parse_command("!") is None


def test_incident_new_with_all_options():
    command = parse_command(
        "!incident new Einbruch Juwelier prio:1 units:alpha,bravo loc:Hauptstraße 5, Köln"
    )
    assert command == IncidentNew("Einbruch Juwelier", 1, ("alpha", "bravo"), "Hauptstraße 5, Köln")


def test_incident_new_defaults_and_quotes():
    assert parse_command('!incident new "Verkehrsunfall A3"') == IncidentNew("Verkehrsunfall A3")
    assert parse_command("!incident new Lage loc:geo:52.52,13.40") == IncidentNew(
        "Lage", location="geo:52.52,13.40"
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("!incident new", "title is missing"),
        ("!incident open X", "Only `!incident new`"),
        ("!incident new X prio:4", "prio must be 1, 2 or 3"),
        ("!incident new X units:", "at least one unit"),
        ("!incident new X loc:geo:99,1", "no valid position"),
        ("!assign", "incident number is missing"),
        ("!assign x alpha", "not an incident number"),
        ("!assign 3", "exactly one unit"),
        ("!assign 3 alpha,bravo", "exactly one unit"),
        ("!alert", "Whom to alert"),
        ("!alert alpha", "text is missing"),
        ("!alert alpha go ack:soon", "whole number"),
        ("!sitrep 3", "text is missing"),
        ("!handover", "exactly one dispatcher"),
        ("!log 3 more", "only the incident number"),
        ("!status now", "no arguments"),
        ("!s 12", "one digit"),
        ("!s", "one digit"),
    ],
)
def test_bad_input_says_what_is_wrong_and_how_to_write_it(text, problem):
    command = parse_command(text)
    assert isinstance(command, Invalid), command
    assert problem in command.message
    assert "Write: !" in command.message


def test_unknown_command_points_to_help():
    command = parse_command("!frobnicate 1")
    assert isinstance(command, Invalid)
    assert "!frobnicate" in command.message and "!help" in command.message


def test_the_other_commands():
    assert parse_command("!help") == Help()
    assert parse_command("!STATUS") == Status()
    assert parse_command("!assign #12 alpha") == Assign(12, "alpha")
    assert parse_command("!release 12 alpha") == Release(12, "alpha")
    assert parse_command("!assign 12 Adler 11/1") == Assign(12, "Adler 11/1")
    assert parse_command("!sitrep 12 Zwei Personen festgenommen") == Sitrep(12, "Zwei Personen festgenommen")
    assert parse_command("!close 12") == Close(12, "")
    assert parse_command("!close 12 Lage beendet") == Close(12, "Lage beendet")
    assert parse_command("!log #4") == Log(4)
    assert parse_command("!handover @anna:police.example") == Handover("@anna:police.example")
    assert parse_command("!s 0") == OfficerStatus(0)


def test_alert_targets_text_and_deadline():
    assert parse_command("!alert alpha,@o1:x,12 Zugriff vorbereiten ack:5") == Alert(
        ("alpha", "@o1:x", "12"), "Zugriff vorbereiten", 5
    )
    assert parse_command("!alert alpha, bravo Lage melden") == Alert(("alpha", "bravo"), "Lage melden")
    # the text may contain other key:value words
    assert parse_command("!alert alpha treffpunkt loc:Markt") == Alert(("alpha",), "treffpunkt loc:Markt")


def test_a_reply_fallback_is_ignored():
    assert parse_command("> <@a:x> something\n\n!status") == Status()
    assert is_acknowledgement("> <@bot:x> Alert A1\n\nQuittiert.")
    assert is_acknowledgement("ack")
    assert is_acknowledgement("ACK!")
    assert not is_acknowledgement("ack later")
    assert not is_acknowledgement("no")


def test_acknowledging_reactions_with_or_without_the_variation_selector():
    assert is_ack_reaction("✅") and is_ack_reaction("👍")
    assert is_ack_reaction("✔️") and is_ack_reaction("✔") and is_ack_reaction("☑️") and is_ack_reaction("☑")
    assert not is_ack_reaction("❌") and not is_ack_reaction("👎")


def test_split_options_values_run_to_the_next_option():
    assert split_options("Title here prio:2 loc:Am Markt 1 units:a,b", ("prio", "units", "loc")) == (
        "Title here",
        {"prio": "2", "loc": "Am Markt 1", "units": "a,b"},
    )


def test_help_lists_every_command():
    for word in (
        "!incident new",
        "!assign",
        "!release",
        "!alert",
        "!status",
        "!sitrep",
        "!handover",
        "!close",
    ):
        assert word in HELP
    assert "!s <0-9>" in HELP
