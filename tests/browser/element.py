"""Stock Element Web in Debian's Chromium, driven through Playwright, for the browser tests.

The built client comes from ``../shared/element-web/`` beside the checkout (CI has it;
see its README): unpacked into a temporary directory, given the project's
``config/element-web/config.json`` pointed at the test homeserver, and served by a
static HTTP server on a loopback port. Chromium is Debian's (``devtools/system-packages.sh``
installs it for ``make test``); Playwright's own browser download is never used.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import shutil
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from playwright.async_api import Locator, Page

REPO = Path(__file__).resolve().parents[2]
ELEMENT_DIR = REPO.parent / "shared" / "element-web"
ELEMENT_VERSION = "1.12.7"
ELEMENT_TARBALL = ELEMENT_DIR / f"element-web-{ELEMENT_VERSION}.tar.gz"
CONFIG = REPO / "config" / "element-web" / "config.json"
CHROMIUM = Path("/usr/bin/chromium")
#: no sandbox (CI runs as root), no GPU, nothing fetched from outside, a fresh profile
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
)
#: Element's first start loads several megabytes of JavaScript and WebAssembly
SLOW = 60_000
#: waiting for the bots and the server (ms)
WAIT = 60_000


def unpack_element(directory: Path) -> Path:
    """Unpack the built client into ``directory``; returns its ``webapp`` folder."""
    with tarfile.open(ELEMENT_TARBALL) as archive:
        archive.extractall(directory, filter="data")
    webapp = directory / "webapp"
    if not (webapp / "index.html").exists():
        raise AssertionError(f"{ELEMENT_TARBALL} holds no webapp/index.html")
    return webapp


def write_config(webapp: Path, base_url: str, server_name: str) -> dict[str, Any]:
    """The project's Element config, pointed at the test homeserver, and the files beside it
    that the deployment mounts next to it (the login page's logo, the home page)."""
    for extra in CONFIG.parent.iterdir():
        if extra.is_file() and extra.name != CONFIG.name and extra.suffix != ".md":
            shutil.copyfile(extra, webapp / extra.name)
    config = json.loads(CONFIG.read_text())
    config["default_server_config"]["m.homeserver"] = {"base_url": base_url, "server_name": server_name}
    (webapp / "config.json").write_text(json.dumps(config, indent=2))
    return config


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".wasm": "application/wasm",
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".json": "application/json",
    }

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def static_server(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 (a port the kernel picks); yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, name="element-web", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def check_chromium() -> None:
    """Fail (never skip) with what to run when the browser or Playwright is missing."""
    if not CHROMIUM.exists():
        raise AssertionError(
            "Debian's chromium is not installed: run `make test` (devtools/system-packages.sh installs it)"
        )
    try:
        import playwright  # noqa: F401
    except ImportError:
        raise AssertionError(
            "playwright is not installed: run `make test` (or `.venv/bin/pip install -e '.[test]'`)"
        ) from None


@attrs.define
class Timings:
    """Figures measured on screen, in seconds (information only: tests assert none of them)."""

    figures: dict[str, float] = attrs.field(factory=dict)

    def record(self, name: str, seconds: float) -> None:
        self.figures[name] = round(seconds, 3)

    def lines(self) -> list[str]:
        return [f"{name}: {seconds:.2f} s" for name, seconds in self.figures.items()]


#: what the browser tests measured in this run, for the terminal summary (conftest.py)
MEASURED: list[tuple[str, Timings, Path]] = []


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


class Screen:
    """One Element tab, with what a person does on it: read, click, type, dismiss."""

    #: buttons that close Element's announcements and hints without changing anything
    #: (notification permission, "We've refreshed your sounds", the new room list tour)
    DISMISS = ("OK", "Next", "Done", "Got it", "Dismiss", "Later", "Not now")

    def __init__(self, page: Page, screenshots: Path) -> None:
        self.page = page
        self.screenshots = screenshots
        self.count = 0
        #: texts of the toasts and announcements closed so far, in order
        self.dismissed: list[str] = []

    async def shot(self, name: str, page: Page | None = None) -> Path:
        """A numbered screenshot of this tab (or of ``page``, another tab)."""
        self.count += 1
        path = self.screenshots / f"{self.count:02d}-{name}.png"
        await (page or self.page).screenshot(path=str(path))
        return path

    # -- reading ---------------------------------------------------------------------

    def tiles(self, text: str | re.Pattern[str]) -> Locator:
        """Timeline tiles (not the pinned-message banner) showing ``text``."""
        return self.page.locator(".mx_EventTile").filter(has_text=text)

    async def wait_tile(self, text: str | re.Pattern[str], timeout: float = WAIT) -> Locator:
        tile = self.tiles(text).last
        await tile.wait_for(state="visible", timeout=timeout)
        return tile

    async def dialog_texts(self) -> list[str]:
        return await self.page.locator(".mx_Dialog").all_inner_texts()

    async def close_dialogs(self) -> None:
        """Close what dialogs are open (an error's "OK", else Escape), the top one first."""
        dialogs = self.page.locator(".mx_Dialog")
        for _ in range(5):
            if not await dialogs.count():
                return
            top = dialogs.last
            ok = top.get_by_role("button", name="OK", exact=True)
            if await ok.count():
                await ok.first.click()
            else:
                await self.page.keyboard.press("Escape")
            await self.page.wait_for_timeout(300)

    async def error_dialogs(self) -> list[str]:
        """The texts of the dialogs open now (a spinner has none)."""
        return [" ".join(text.split()) for text in await self.dialog_texts() if text.strip()]

    @staticmethod
    async def shields(tile: Locator) -> list[str]:
        """The encryption shields Element draws on a tile, as "class: tooltip" (none for a
        message decrypted from a device its owner verified)."""
        return await tile.locator(".mx_EventTile_e2eIcon").evaluate_all(
            """icons => icons.map(icon => {
                const label = document.getElementById(icon.getAttribute('aria-labelledby') || '');
                return icon.className + ': ' + (label ? label.innerText : icon.getAttribute('aria-label'));
            })"""
        )

    # -- hints, toasts and announcements --------------------------------------------------

    async def dismiss_hints(self, keep: tuple[str, ...] = ()) -> None:
        """Close the toasts and release announcements Element pops up over the room list
        (they catch clicks meant for what lies below), as a user would; toasts whose text
        contains one of ``keep`` stay."""
        page = self.page
        for _ in range(12):
            closed = False
            for container in (
                page.locator("[data-floating-ui-portal] [role=dialog]"),
                page.locator(".mx_ToastContainer .mx_Toast_toast"),
            ):
                for index in range(await container.count()):
                    hint = container.nth(index)
                    try:
                        text = " ".join((await hint.inner_text(timeout=1000)).split())
                    except Exception:
                        continue
                    if any(word in text for word in keep):
                        continue
                    for name in self.DISMISS:
                        button = hint.get_by_role("button", name=name, exact=True)
                        if await button.count():
                            await button.first.click(timeout=5000)
                            self.dismissed.append(text)
                            closed = True
                            break
                    if closed:
                        break
                if closed:
                    break
            if not closed:
                return
            await page.wait_for_timeout(300)

    # -- login -----------------------------------------------------------------------

    async def open_login(self, base_url: str) -> None:
        await self.page.goto(f"{base_url}/#/login")
        await self.page.locator("#mx_LoginForm_username").wait_for(timeout=SLOW)

    async def submit_login(self, localpart: str, password: str) -> None:
        page = self.page
        await page.locator("#mx_LoginForm_username").fill(localpart)
        await page.locator("#mx_LoginForm_password").fill(password)
        await page.locator(".mx_Login_submit").click()

    async def login_error(self) -> Locator:
        error = self.page.locator(".mx_Login_error")
        await error.wait_for(state="visible", timeout=WAIT)
        return error

    # -- rooms and composer ------------------------------------------------------------

    def room_list(self) -> Locator:
        return self.page.locator(".mx_RoomListPanel")

    async def open_room(self, name: str) -> None:
        await self.dismiss_hints()
        await self.room_list().get_by_role("option", name=re.compile(re.escape(name))).first.click()

    async def send(self, text: str) -> None:
        composer = self.page.locator(".mx_BasicMessageComposer_input")
        await composer.click()
        await composer.press_sequentially(text)
        await composer.press("Enter")

    async def upload(self, path: Path) -> None:
        """Attach a file with the composer's paperclip and confirm Element's upload dialog."""
        page = self.page
        async with page.expect_file_chooser() as chooser:
            await page.get_by_role("button", name="Attachment").click()
        await (await chooser.value).set_files(str(path))
        dialog = page.locator(".mx_Dialog").filter(has_text="Upload files")
        await dialog.get_by_role("button", name="Upload").click()
        await dialog.wait_for(state="detached", timeout=WAIT)
