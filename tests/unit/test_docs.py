"""The README and the guides in docs/ hold together: every relative link points
to a file that exists and, with an #anchor, to a heading in it; the README
stays a first screen; docs/policy.md names every key of the module's config;
every ``police-policy``/``police-audit`` command the guides show exists."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import unquote

import pytest

from bots.auditor import cli as audit_cli
from synapse_police_policy.config import config_keys
from synapse_police_policy.ops import cli as policy_cli

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
POLICY_GUIDE = REPO_ROOT / "docs" / "policy.md"
DOCUMENTS = [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]
README_LIMIT = 12_000  # bytes: "under 12 KB" however a kilobyte is counted

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", re.M)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _read(path: Path) -> str:
    return path.read_text(encoding="utf8")


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans (links there are code)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text, lower case, without
    punctuation but ``-`` and ``_``, spaces as ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a markdown file, duplicates numbered as GitHub does."""
    seen: dict[str, int] = {}
    found = set()
    for match in HEADING.finditer(FENCE.sub("", _read(path))):
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(_prose(_read(path)))
        if not SCHEME.match(target) and not target.startswith("//")
    ]


def _ids(paths: Sequence[Path]) -> list[str]:
    return [str(path.relative_to(REPO_ROOT)) for path in paths]


def test_the_guides_are_there() -> None:
    names = {path.name for path in DOCUMENTS}
    expected = {"operator.md", "policy.md", "dispatcher.md", "auditor.md", "performance.md", "development.md"}
    assert expected <= names
    readme = _read(README)
    for name in sorted(expected):
        assert f"](docs/{name}" in readme, f"the README does not link docs/{name}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=_ids(DOCUMENTS))
def test_relative_links_point_to_files_and_headings(document: Path) -> None:
    broken = []
    for target in relative_links(document):
        file_part, _, anchor = target.partition("#")
        linked = (document.parent / unquote(file_part)).resolve() if file_part else document
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
            continue
        if anchor and linked.suffix == ".md" and unquote(anchor).lower() not in anchors(linked):
            broken.append(f"{target}: no heading with the anchor #{anchor} in {linked.name}")
    assert broken == [], f"{document.relative_to(REPO_ROOT)} has broken links: {broken}"


def test_the_slugs_are_githubs() -> None:
    assert (
        github_slug("`police-policy check-config HOMESERVER_YAML`")
        == "police-policy-check-config-homeserver_yaml"
    )
    assert (
        github_slug("The reverse proxy: which address Synapse sees")
        == "the-reverse-proxy-which-address-synapse-sees"
    )
    assert github_slug("The auditor bot (`bots/auditor/`)") == "the-auditor-bot-botsauditor"
    assert github_slug("The bots' identities") == "the-bots-identities"


def test_the_readme_stays_a_first_screen() -> None:
    size = len(README.read_bytes())
    assert size < README_LIMIT, f"README.md is {size} bytes; move reference material to docs/"


def test_the_readme_keeps_the_two_commands() -> None:
    readme = _read(README)
    assert "\n## Two commands\n" in readme
    assert "make run     # a development homeserver on http://127.0.0.1:8008 with the policy module" in readme
    assert "make test    # the whole test suite, integration tests against real Synapse included" in readme
    assert "\n## What is where\n" in readme


def module_keys() -> set[str]:
    """The keys of the config's field table (``config.py``), which the parser accepts."""
    return {f"{section}.{key}" for section, key in config_keys()}


def test_every_module_key_is_in_the_policy_guide() -> None:
    guide = _read(POLICY_GUIDE)
    keys = module_keys()
    assert keys, "no config keys found"
    missing = sorted(key for key in keys if f"`{key}`" not in guide)
    assert missing == [], "keys missing from docs/policy.md"
    sections = {key.split(".", 1)[0] for key in keys}
    assert sorted(section for section in sections if f"`{section}`" not in guide) == []


def test_the_policy_guides_key_table_lists_only_known_keys() -> None:
    table = _read(POLICY_GUIDE).split("\n## Configuration keys\n", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", table, flags=re.M))
    assert listed == module_keys()


COMMANDS: dict[str, Callable[[Sequence[str] | None], int]] = {
    "police-policy": policy_cli.main,
    "police-audit": audit_cli.main,
}


def mentioned_commands() -> set[tuple[str, ...]]:
    """``police-policy devices approve`` and the like, as code in the guides:
    the program and the words after it that look like subcommands."""
    found = set()
    for document in DOCUMENTS:
        text = _read(document)
        code = [match.group(0) for match in FENCE.finditer(text)]
        code += [match.group(2) for match in INLINE_CODE.finditer(FENCE.sub("", text))]
        for snippet in code:
            for match in re.finditer(r"\b(police-policy|police-audit)\b((?:[ \t]+[^\s`]+){0,2})", snippet):
                words = []
                for word in match.group(2).split():
                    if not re.fullmatch(r"[a-z][a-z-]*", word):
                        break
                    words.append(word)
                found.add((match.group(1), *words))
    return found


def test_the_guides_show_the_commands() -> None:
    shown = mentioned_commands()
    for command in [
        ("police-policy", "check-config"),
        ("police-policy", "devices", "approve"),
        ("police-policy", "retention", "status"),
        ("police-audit", "verify-log"),
        ("police-audit", "verify-export"),
    ]:
        assert any(mention[: len(command)] == command for mention in shown), command


@pytest.mark.parametrize("mention", sorted(mentioned_commands()), ids=" ".join)
def test_every_command_the_guides_show_exists(mention: tuple[str, ...]) -> None:
    program, *words = mention
    output = io.StringIO()
    with (
        contextlib.redirect_stdout(output),
        contextlib.redirect_stderr(output),
        pytest.raises(SystemExit) as done,
    ):
        COMMANDS[program]([*words, "--help"])
    assert done.value.code == 0, f"{' '.join(mention)}: {output.getvalue()}"


def _map_rows() -> list[tuple[str, str]]:
    """The README's "What is where": (path cell, description cell) of each row."""
    section = README.read_text().split("## What is where", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            rows.append((cells[0], cells[1]))
    return rows


def test_the_readme_map_matches_the_module_tree() -> None:
    """Every module file the map names exists, and every one of them is named: a folder's
    row names its files (in its description), a file row names it with its siblings."""
    named: set[Path] = set()
    for path_cell, description in _map_rows():
        paths = re.findall(r"`([^`]+)`", path_cell)
        first = REPO_ROOT / paths[0]
        assert first.exists(), f"What is where names {paths[0]}, which is not in the tree"
        if not paths[0].startswith("synapse_police_policy/"):
            continue
        if first.is_dir():
            for name in re.findall(r"`([\w/]+\.py)`", description):
                named.add(first / name)
        else:
            named.update(first.parent / name for name in [Path(paths[0]).name, *paths[1:]])
    module = REPO_ROOT / "synapse_police_policy"
    files = {path for path in module.rglob("*.py") if path.name != "__init__.py"}
    assert not named - files, f"What is where names files that are not there: {sorted(named - files)}"
    assert not files - named, f"What is where leaves out: {sorted(files - named)}"
