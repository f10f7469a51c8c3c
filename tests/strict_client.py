"""A strict end-to-end encrypted client for integration tests: matrix-js-sdk with
its Rust crypto in a Node process (tests/strict_client/client.mjs), cross-signing
bootstrapped as Element does at first login, and "exclude insecure devices"
(MSC4153): it shares room keys only with devices their owner cross-signed and
does not decrypt events from other devices.

    async with StrictClient(tmp_path / "officer.log") as officer:
        await officer.login(hs.url, user_id, password, device_id)
        await officer.bootstrap_cross_signing()
        ...

or ``await strict_login(hs, localpart, password, tmp_path)``, which also enrolls
the device. The npm packages come from ``make test`` (``npm ci`` in
tests/strict_client); without them every use fails, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import attrs

from devtools.homeserver import Homeserver

CLIENT_DIR = Path(__file__).resolve().parent / "strict_client"
CLIENT_SCRIPT = CLIENT_DIR / "client.mjs"
#: written by ``npm ci`` when it completes
INSTALLED_MARKER = CLIENT_DIR / "node_modules" / ".package-lock.json"

#: seconds added to an operation's own timeout before Python gives up on it
MARGIN = 30.0
#: lines of the Node process's stderr quoted in errors
STDERR_TAIL = 60


class StrictClientError(AssertionError):
    """An operation failed, timed out, or the Node process died."""


@attrs.frozen
class Shield:
    """What Element would draw next to a decrypted event (``getEncryptionInfoForEvent``)."""

    #: "NONE" (no warning), "GREY" or "RED"
    colour: str
    #: an ``EventShieldReason`` name such as "UNSIGNED_DEVICE"; None with colour "NONE"
    reason: str | None


@attrs.frozen
class Message:
    """A timeline event as the strict client sees it (a message, or an event it
    could not decrypt, whose type it does not know)."""

    event_id: str
    sender: str
    #: the decrypted type; "m.room.encrypted" when decryption failed
    type: str
    body: str | None
    content: dict[str, Any] | None
    encrypted: bool
    decrypted: bool
    #: a ``DecryptionFailureCode`` name such as "UNSIGNED_SENDER_DEVICE" or
    #: "MEGOLM_UNKNOWN_INBOUND_SESSION_ID"; None when decrypted (or not encrypted)
    decryption_error: str | None
    #: None when not decrypted or not encrypted
    shield: Shield | None
    origin_server_ts: int

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> Message:
        shield = result.pop("shield")
        return cls(**result, shield=Shield(**shield) if shield else None)


def check_installed() -> None:
    """Fail (never skip) with what to run when Node or the npm packages are missing."""
    if shutil.which("node") is None:
        raise StrictClientError(
            "node is not installed: run `make test` (devtools/system-packages.sh installs "
            "Debian's nodejs and npm)"
        )
    if not INSTALLED_MARKER.exists():
        raise StrictClientError(
            f"the strict client's npm packages are missing ({INSTALLED_MARKER.parent}): run `make test`, "
            "which runs `npm ci --prefix tests/strict_client`"
        )


class StrictClient:
    """One matrix-js-sdk client in its own Node process; its stderr (the SDK's log)
    goes to ``log_path``. Methods mirror the operations of client.mjs."""

    def __init__(self, log_path: Path, *, name: str | None = None) -> None:
        self.log_path = log_path
        self.name = name or log_path.stem
        self.user_id: str | None = None
        self.device_id: str | None = None
        self._password: str | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._ready: asyncio.Future[None] | None = None
        self._exit_reason: str | None = None

    # -- process ---------------------------------------------------------------

    async def start(self, timeout: float = 60.0) -> Self:
        check_installed()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                "node",
                str(CLIENT_SCRIPT),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                cwd=CLIENT_DIR,
                limit=64 * 1024 * 1024,
            )
        self._ready = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except (TimeoutError, StrictClientError) as error:
            await self.close()
            why = str(error) or f"node did not start within {timeout:g}s"
            raise StrictClientError(self._explain(why)) from None
        return self

    async def __aenter__(self) -> Self:
        if self._process is None:
            await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self, timeout: float = 10.0) -> None:
        """Stop the client and end the process (killed if it does not leave in time)."""
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(Exception):
                await self._call("stop", timeout=timeout)
            if process.stdin is not None:
                process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader, timeout)
        self._process = None

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        stdout = self._process.stdout
        while line := await stdout.readline():
            try:
                message = json.loads(line)
            except ValueError:
                self._fail_all(f"not JSON on stdout: {line[:300]!r}")
                continue
            if message.get("id") is None:
                if message.get("ok") and self._ready is not None and not self._ready.done():
                    self._ready.set_result(None)
                continue
            future = self._pending.pop(message["id"], None)
            if future is None or future.done():
                continue
            if message.get("ok"):
                future.set_result(message.get("result"))
            else:
                future.set_exception(StrictClientError(message.get("error", "unknown error")))
        code = await self._process.wait()
        self._exit_reason = f"node exited with code {code}"
        self._fail_all(self._exit_reason)

    def _fail_all(self, reason: str) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(StrictClientError(reason))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(StrictClientError(reason))
        self._pending.clear()

    def _stderr_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        # the Rust crypto's source locations say nothing to the reader of a failed test
        lines = [line for line in lines if not line.startswith("    at /")]
        return "\n".join(lines[-STDERR_TAIL:])

    def _explain(self, what: str) -> str:
        tail = self._stderr_tail()
        return f"strict client {self.name}: {what}\n--- last lines of {self.log_path} ---\n{tail}"

    async def _call(self, op: str, *, timeout: float, **args: Any) -> Any:
        process = self._process
        if process is None or process.stdin is None:
            raise StrictClientError(self._explain(f"{op}: not started"))
        if process.returncode is not None:
            raise StrictClientError(self._explain(f"{op}: {self._exit_reason or 'node has exited'}"))
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        process.stdin.write(json.dumps({"id": request_id, "op": op, **args}).encode() + b"\n")
        try:
            await process.stdin.drain()
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise StrictClientError(self._explain(f"{op} got no answer within {timeout:g}s")) from None
        except (StrictClientError, ConnectionError) as error:
            raise StrictClientError(self._explain(f"{op} failed: {error}")) from None
        finally:
            self._pending.pop(request_id, None)

    async def _timed(self, op: str, timeout: float, **args: Any) -> Any:
        """An operation that waits on the node side for ``timeout`` seconds."""
        return await self._call(op, timeout=timeout + MARGIN, timeout_ms=int(timeout * 1000), **args)

    # -- operations ------------------------------------------------------------

    async def login(
        self, homeserver_url: str, user_id: str, password: str, device_id: str, *, timeout: float = 60.0
    ) -> dict[str, Any]:
        """Password login on ``device_id`` (enrolled beforehand), in-memory Rust
        crypto, client started; returns once the first sync is processed.
        Returns {"user_id", "device_id", "crypto": version string}."""
        result = await self._timed(
            "login",
            timeout,
            homeserver_url=homeserver_url,
            user_id=user_id,
            password=password,
            device_id=device_id,
        )
        self.user_id, self.device_id, self._password = result["user_id"], result["device_id"], password
        return result

    async def bootstrap_cross_signing(
        self, password: str | None = None, *, strict: bool = True
    ) -> dict[str, Any]:
        """Create and upload cross-signing keys and sign this device (UIA with the
        login password when the server asks), then set the isolation mode:
        ``strict`` = only cross-signed devices (MSC4153), else all devices.
        Returns the cross-signing status (see ``cross_signing_status``)."""
        return await self._call(
            "bootstrap_cross_signing", timeout=120.0, password=password or self._password, strict=strict
        )

    async def set_isolation(self, *, strict: bool) -> None:
        await self._call("set_isolation", timeout=30.0, mode="only_signed" if strict else "all")

    async def cross_signing_status(self) -> dict[str, Any]:
        """{"ready", "public_keys_on_device", "private_keys_cached",
        "own_device_signed_by_owner", "isolation": "only_signed" | "all"}."""
        return await self._call("cross_signing_status", timeout=30.0)

    async def create_room(
        self, *, name: str | None = None, invite: list[str] | tuple[str, ...] = (), encrypted: bool = True
    ) -> str:
        """createRoom (private_chat, m.room.encryption in initial_state when
        ``encrypted``); returns the room ID once the room came down the sync."""
        result = await self._timed("create_room", 30.0, name=name, invite=list(invite), encrypted=encrypted)
        return result["room_id"]

    async def join(self, room_id: str) -> None:
        """Join and wait until the join came down the sync."""
        await self._timed("join", 30.0, room_id=room_id)

    async def wait_invited(
        self, *, inviter: str | None = None, count: int = 1, timeout: float = 30.0
    ) -> list[str]:
        """The rooms this client is invited to (by ``inviter``), once there are ``count``."""
        result = await self._timed("wait_invited", timeout, inviter=inviter, count=count)
        return result["room_ids"]

    async def wait_joined(self, room_id: str, *user_ids: str, timeout: float = 30.0) -> None:
        """Wait until this client sees itself and ``user_ids`` joined to the room."""
        await self._timed("wait_joined", timeout, room_id=room_id, user_ids=list(user_ids))

    async def send_text(self, room_id: str, body: str) -> str:
        """Send an m.text message (encrypted in an encrypted room); returns its event ID."""
        result = await self._call("send_text", timeout=60.0, room_id=room_id, body=body)
        return result["event_id"]

    async def react(self, room_id: str, event_id: str, key: str) -> str:
        """Send an m.reaction annotating ``event_id`` with ``key``; returns its event ID."""
        result = await self._call("react", timeout=60.0, room_id=room_id, event_id=event_id, key=key)
        return result["event_id"]

    async def wait_for_message(
        self,
        room_id: str,
        *,
        sender: str | None = None,
        body_contains: str | None = None,
        decrypted: bool | None = None,
        decryption_error: str | None = None,
        event_type: str = "m.room.message",
        timeout: float = 30.0,
    ) -> Message:
        """The first timeline event (seen before or arriving later) of
        ``event_type`` or that failed to decrypt, whose decryption attempt has
        settled, and that matches: ``sender``; ``body_contains`` (decrypted
        events only); ``decrypted`` True/False (None: either); ``decryption_error``
        (a failure with this ``DecryptionFailureCode`` name).

        An event that failed may be decrypted later (its key arrives, its sender's
        device gets cross-signed): wait with ``decrypted=True`` for a message, and
        with ``decryption_error`` for a specific failure."""
        result = await self._timed(
            "wait_for_message",
            timeout,
            room_id=room_id,
            sender=sender,
            body_contains=body_contains,
            decrypted=decrypted,
            decryption_error=decryption_error,
            type=event_type,
        )
        return Message.from_result(result)

    async def messages(self, room_id: str, *, event_type: str = "m.room.message") -> list[Message]:
        """The room's messages (and undecryptable events) seen so far, in order."""
        result = await self._call("messages", timeout=30.0, room_id=room_id, type=event_type)
        return [Message.from_result(item) for item in result]

    async def user_verification(self, user_id: str) -> dict[str, Any]:
        """The user's identity as this client sees it (keys downloaded first):
        {"user_id", "has_cross_signing_keys", "verified", "cross_signing_verified",
        "was_cross_signing_verified", "needs_user_approval", "devices": [device IDs]}."""
        return await self._call("user_verification", timeout=60.0, user_id=user_id)

    async def device_info(self, user_id: str, device_id: str, *, timeout: float = 0.0) -> dict[str, Any]:
        """Whether the device is cross-signed by its owner (the user's keys queried
        first; ``timeout``: seconds to wait for an unknown device to appear):
        {"user_id", "device_id", "known"} and, when known, "signed_by_owner",
        "cross_signing_verified", "locally_verified", "verified"."""
        return await self._timed("device_info", timeout, user_id=user_id, device_id=device_id)

    async def stop(self) -> None:
        await self.close()


async def strict_login(
    homeserver: Homeserver,
    localpart: str,
    password: str,
    log_dir: Path,
    *,
    cross_signing: bool = True,
    strict: bool = True,
) -> StrictClient:
    """Enroll a new device (as the MDM would), start a client and log in on it;
    with ``cross_signing`` bootstrap it and set the isolation mode (``strict``:
    only cross-signed devices). Close the client when done."""
    device_id = f"STRICT-{uuid.uuid4().hex[:8].upper()}"
    homeserver.enroll(localpart, device_id, label=f"strict test client of {localpart}")
    client = StrictClient(log_dir / f"strict-{localpart}-{device_id}.log", name=f"{localpart}/{device_id}")
    await client.start()
    try:
        await client.login(homeserver.url, homeserver.user_id(localpart), password, device_id)
        if cross_signing:
            await client.bootstrap_cross_signing(password, strict=strict)
        else:
            await client.set_isolation(strict=strict)
    except BaseException:
        await client.close()
        raise
    return client
