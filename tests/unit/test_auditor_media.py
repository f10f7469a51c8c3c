"""The auditor bot's media-rule checks, its config for them and its metrics endpoint."""

from __future__ import annotations

import random
import re
import socket
import urllib.request
from pathlib import Path

import pytest
import yaml

from bots.auditor.archive import Archive, Attachment, Message
from bots.auditor.config import ConfigError, parse_config
from bots.auditor.media_rules import PolicyFileError, check_attachment, load_policy, size_limit
from bots.auditor.metrics import BotCollector, serve_metrics
from bots.auditor.notices import media_notice
from bots.auditor.replies import HealthStats
from tests import media_corpus
from tests.unit.test_auditor_commands import _raw as raw_config

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "config" / "police_policy.yaml"


@pytest.fixture(scope="module")
def rules():
    return load_policy(POLICY).media


def test_the_repositorys_policy_file_gives_the_modules_media_rules(rules):
    assert rules.allowed["application/pdf"] == 50 * 1024**2
    assert "application/x-executable" not in rules.allowed


def test_a_homeserver_yaml_that_loads_the_module_works_too(tmp_path):
    homeserver = {
        "server_name": "x.test",
        "modules": [
            {"module": "other.Module", "config": {}},
            {
                "module": "synapse_police_policy.PolicePolicy",
                "config": {"media": {"allowed": {"image/png": "1M"}}},
            },
        ],
    }
    path = tmp_path / "homeserver.yaml"
    path.write_text(yaml.safe_dump(homeserver))
    assert dict(load_policy(path).media.allowed) == {"image/png": 1024**2}


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ({"media": {"allowed": {"image/png": "lots"}}}, "media.allowed.image/png"),
        (
            {"modules": [{"module": "synapse_police_policy.PolicePolicy", "config": {"colour": 1}}]},
            "modules[0]",
        ),
        ({"modules": []}, "no 'synapse_police_policy.PolicePolicy' entry"),
    ],
)
def test_a_wrong_policy_file_names_the_key(tmp_path, document, fragment):
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(PolicyFileError) as error:
        load_policy(path)
    assert fragment in str(error.value)


@pytest.mark.parametrize(
    ("data", "detected", "allowed"),
    [
        (media_corpus.jpeg(), "image/jpeg", True),
        (media_corpus.pdf(), "application/pdf", True),
        (media_corpus.padded(media_corpus.elf(), 4096), "application/x-executable", False),
        (media_corpus.pe(), "application/vnd.microsoft.portable-executable", False),
        (media_corpus.shell_script(), "text/x-shellscript", False),
        # after decryption, bytes of no known type are no ciphertext: refused, random or
        # not. A fixed buffer: about one random buffer in 80 reads to libmagic as some
        # type, which would make the detected type flaky here.
        (random.Random(0).randbytes(8192), "application/octet-stream", False),
        (media_corpus.elf_behind_random(), "application/octet-stream", False),
    ],
)
def test_decrypted_attachments_get_the_modules_verdict(rules, data, detected, allowed):
    verdict = check_attachment(rules, data)
    assert (verdict.detected, verdict.allowed, verdict.size) == (detected, allowed, len(data))
    if not allowed:
        assert verdict.rule == "media.type"
        assert "allowed: application/pdf" in verdict.reason
        assert detected in verdict.reason or "Files of no known type" in verdict.reason


@pytest.mark.parametrize("name", sorted(media_corpus.SMUGGLED))
def test_decrypted_smuggled_files_are_refused(rules, name):
    """What the server refuses in clear uploads, the bot refuses in decrypted attachments:
    the repository's policy file turns both options on."""
    assert rules.refuse_pdf_active_content and rules.refuse_trailing_data
    make, _declared, _file_name, rule = media_corpus.SMUGGLED[name]
    verdict = check_attachment(rules, make())
    assert (verdict.allowed, verdict.rule) == (False, rule), verdict


@pytest.mark.parametrize("name", sorted(media_corpus.ALLOWED_VARIANTS))
def test_decrypted_harmless_look_alikes_are_allowed(rules, name):
    make, mime = media_corpus.ALLOWED_VARIANTS[name]
    verdict = check_attachment(rules, make())
    assert (verdict.detected, verdict.allowed) == (mime, True), verdict


def test_no_plaintext_reaches_the_file_system(rules, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    check_attachment(rules, media_corpus.elf())
    assert not list(tmp_path.iterdir())


# -- configuration --------------------------------------------------------------------------------


def _raw(tmp_path: Path, **changes: object) -> dict:
    """The unit tests' bot config, without audit_lifetime (it may come from the policy)."""
    return raw_config(tmp_path, audit_lifetime=None, **changes)


def test_config_without_policy_checks_nothing(tmp_path):
    config = parse_config(_raw(tmp_path), tmp_path)
    assert (config.media, config.admin_token, config.metrics_port) == (None, None, None)
    assert config.audit_lifetime == 90 * 86400 and config.purge_interval == 86400


def test_config_with_policy_admin_token_and_metrics(tmp_path):
    (tmp_path / "policy.yaml").write_text(
        yaml.safe_dump({"retention": {"audit_lifetime": "30d"}, "media": {"allowed": {"image/png": "1M"}}})
    )
    (tmp_path / "admin-token").write_text("syt_secret\n")
    raw = _raw(
        tmp_path,
        policy_file="policy.yaml",
        admin_token_file="admin-token",
        metrics_port=9101,
        purge_interval="1h",
    )
    config = parse_config(raw, tmp_path)
    assert dict(config.media.allowed) == {"image/png": 1024**2}
    assert config.audit_lifetime == 30 * 86400  # the module's, when the bot names none
    assert config.admin_token == "syt_secret" and "syt_secret" not in repr(config)
    assert (config.metrics_port, config.metrics_address, config.purge_interval) == (9101, "127.0.0.1", 3600)
    assert parse_config({**raw, "audit_lifetime": "30d"}, tmp_path).audit_lifetime == 30 * 86400
    with pytest.raises(ConfigError, match=r"audit_lifetime: 10s differs from retention\.audit_lifetime"):
        parse_config({**raw, "audit_lifetime": "10s"}, tmp_path)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"policy_file": "missing.yaml"}, "missing.yaml: cannot read the file"),
        ({"admin_token_file": "missing"}, "admin_token_file: cannot read"),
        ({"metrics_port": "9101"}, "metrics_port: expected a TCP port"),
        ({"metrics_port": 70000}, "metrics_port: expected a TCP port"),
        ({"purge_interval": "often"}, "purge_interval: expected a positive duration"),
    ],
)
def test_config_errors_name_the_key(tmp_path, changes, fragment):
    with pytest.raises(ConfigError) as error:
        parse_config(_raw(tmp_path, **changes), tmp_path)
    assert fragment in str(error.value)


# -- metrics --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_metrics_serve_the_undecryptable_count_and_the_archive_figures(tmp_path):
    with Archive(tmp_path / "archive.sqlite", bytes(32)) as archive:
        archive.add(Message("$a", "!r:x.test", "@a:x.test", "DEV", 1_000, "hello"))
        archive.add(
            Message(
                "$b",
                "!r:x.test",
                "@a:x.test",
                "DEV",
                2_000,
                "tool.exe",
                attachments=(Attachment("tool.exe", "application/octet-stream", b"MZ"),),
                violation="media.type: application/vnd.microsoft.portable-executable",
            )
        )
        archive.mark_redacted("$b", 3_000, "@auditor:x.test")
        health = HealthStats(7, 2, 1_700_000_000_000, media_rules=True, violations_found=1)
        port = _free_port()
        server = serve_metrics(port, "127.0.0.1", BotCollector(lambda: health, archive.stats))
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                text = response.read().decode()
        finally:
            server.shutdown()
            server.server_close()
    lines = set(text.splitlines())
    for expected in (
        "police_auditor_undecryptable_events_total 7.0",
        "police_auditor_undecryptable_pending 2.0",
        "police_auditor_archived_messages 2.0",
        "police_auditor_archived_redacted_messages 1.0",
        "police_auditor_archived_policy_violations 1.0",
        "police_auditor_media_violations_total 1.0",
        "police_auditor_media_rules_enabled 1.0",
        "police_auditor_media_quarantine_enabled 0.0",
        "police_auditor_oldest_archived_message_seconds 1.0",
    ):
        assert expected in lines, text


def test_metrics_without_the_archive_still_serve_the_bots_counters():
    def broken():
        raise RuntimeError("closed")

    collected = {metric.name for metric in BotCollector(lambda: HealthStats(1, 0, 0), broken).collect()}
    assert "police_auditor_undecryptable_events" in collected
    assert "police_auditor_archived_messages" not in collected


# -- the archive backend --------------------------------------------------------------------------


def test_config_names_a_postgresql_archive_with_its_attachment_directory(tmp_path):
    dsn = "host=db.police.example dbname=auditor user=auditor"
    config = parse_config(
        _raw(tmp_path, archive_path=None, archive_postgres=dsn, attachments_dir="files"), tmp_path
    )
    assert (config.archive_path, config.archive_postgres) == (None, dsn)
    assert config.attachments_dir == tmp_path / "files"
    assert config.signing_key_file == tmp_path / "export-signing-key.pem"
    assert "dbname" not in repr(config)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"archive_postgres": "dbname=a"}, "archive_path, archive_postgres: expected exactly one"),
        ({"archive_path": None}, "archive_path, archive_postgres: expected exactly one"),
        ({"archive_path": None, "archive_postgres": "dbname=a"}, "attachments_dir: required"),
        ({"attachments_dir": "files"}, "attachments_dir: only with archive_postgres"),
    ],
)
def test_config_archive_backend_errors(tmp_path, changes, fragment):
    with pytest.raises(ConfigError) as error:
        parse_config(_raw(tmp_path, **changes), tmp_path)
    assert fragment in str(error.value)


# -- the notice to the sender ---------------------------------------------------------------------


def _notice(rules, rule="media.type", detected="application/x-executable", name="report.pdf", **changes):
    arguments = {
        "size": 4096,
        "limit": size_limit(rules, detected),
        "allowed": tuple(rules.allowed),
        "redacted": True,
        "quarantined": True,
        **changes,
    }
    return media_notice("@alice:x.test", "Alice Adler", name, rule, detected, **arguments)


def _outside_code(formatted: str) -> str:
    """The HTML with its <code> elements and the pill's link target taken out."""
    return re.sub(r"<code>.*?</code>|href=\"[^\"]*\"", "", formatted)


@pytest.mark.parametrize(
    ("redacted", "quarantined", "fragments"),
    [
        (True, True, ["was removed.", "`application/x-executable`"]),
        (True, None, ["was removed.", "not quarantined (the auditor bot has no admin token)"]),
        (True, False, ["Quarantining its copy on the server failed and is tried again."]),
        (False, True, ["removing it failed and is tried again"]),
    ],
)
def test_the_sender_is_told_what_was_found_what_is_allowed_and_what_was_done(
    rules, redacted, quarantined, fragments
):
    verdict = check_attachment(rules, media_corpus.elf())
    content = _notice(rules, verdict.rule, verdict.detected, redacted=redacted, quarantined=quarantined)
    body = content["body"]
    assert body.startswith("Alice Adler: your attachment `report.pdf`")
    assert "Allowed types: application (`pdf`), audio (`mp4`, `mpeg`, `ogg`), image (`heic`" in body
    assert content["m.mentions"] == {"user_ids": ["@alice:x.test"]}
    for fragment in fragments:
        assert fragment in body
    if quarantined:
        assert "quarantin" not in body


def test_the_notice_is_short_and_claims_nothing_the_rules_do_not_say(rules):
    body = _notice(rules)["body"]
    assert "encrypted" not in body and "MiB" not in body  # no sizes, no "encrypted attachments allowed"
    assert len(body) < 300


def test_names_and_types_are_code_and_the_sender_a_pill_so_element_links_nothing(rules):
    content = _notice(rules, detected="application/vnd.microsoft.portable-executable", name="lageskript.sh")
    formatted = content["formatted_body"]
    assert formatted.startswith('<a href="https://matrix.to/#/@alice:x.test">Alice Adler</a>: ')
    assert "<code>lageskript.sh</code>" in formatted
    assert "<code>application/vnd.microsoft.portable-executable</code>" in formatted
    outside = _outside_code(formatted)
    assert ".sh" not in outside and "vnd." not in outside and "@alice" not in outside
    assert "`lageskript.sh`" in content["body"]
    assert "`application/vnd.microsoft.portable-executable`" in content["body"]


def test_a_hostile_file_name_stays_one_short_code_span(rules):
    content = _notice(rules, name="a`b <i>x</i>\n" + "y" * 200)
    assert "<i>" not in content["formatted_body"] and "&lt;i&gt;" in content["formatted_body"]
    (name,) = re.findall(r"<code>(a`.*?)</code>", content["formatted_body"])
    assert len(name) < 120 and name.endswith("…")
    assert "`a'b <i>x</i> yyy" in content["body"] and "\n" not in content["body"]


@pytest.mark.parametrize(
    ("rule", "detected", "size", "fragment"),
    [
        (
            "media.too_large",
            "image/png",
            31 * 1024**2,
            "Its content (`image/png`, 31.0 MiB) is larger than the 30.0 MiB allowed.",
        ),
        ("media.too_large", "application/octet-stream", 600 * 1024**2, "larger than the 500.0 MiB allowed."),
        ("media.empty", "application/x-empty", 0, "Empty files are not allowed."),
        (
            "media.active_content",
            "application/pdf",
            1,
            "Its content (`application/pdf`) holds active content (JavaScript, automatic actions or "
            "embedded files), which is not allowed here.",
        ),
        (
            "media.trailing_data",
            "image/jpeg",
            1,
            "Its content (`image/jpeg`) carries other data behind the file itself, which is not "
            "allowed here.",
        ),
        ("media.other", "image/png", 1, "It breaks the media rule `media.other`."),
    ],
)
def test_other_rules_say_why_in_one_sentence(rules, rule, detected, size, fragment):
    body = _notice(rules, rule, detected, size=size)["body"]
    assert fragment in body
    assert "Allowed types" not in body


def test_content_of_no_known_type_is_told_as_such(rules):
    body = _notice(rules, "media.type", "application/octet-stream")["body"]
    assert "Its content is of no known type, which is not allowed here. Allowed types: " in body
    assert "octet-stream" not in body
