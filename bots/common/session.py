"""A bot's Matrix session on its enrolled device: login, key upkeep, and the sync loop.

The module lets a bot log in only on the device enrolled for it, so the login
always names that device; the access token is kept (0600) in the store
directory and restored at the next start, so a restart does not add a device
or lose the E2EE store's keys.

The sync token is saved only after a whole sync response was handled (never by
nio itself, which saves it before the callbacks ran): a bot killed half-way
through a response sees the same events again after the restart, and nothing
it had not finished is lost. A response whose handling failed (or that nio
itself failed to take in) is synced again from the last saved token after a
pause, rather than skipped until the next restart. Each bot decides where its
token lives (see ``SyncTokens``) and makes handling an event twice harmless.

After every login the device is checked to be signed by the bot's
cross-signing identity (``bots.common.identity``): clients that exclude
insecure devices talk only to such devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from nio import (
    AsyncClient,
    AsyncClientConfig,
    ErrorResponse,
    LoginError,
    LoginResponse,
    SyncError,
    SyncResponse,
    WhoamiResponse,
)

from .config import Account
from .identity import IdentityError, IdentityFile, ServerIdentity, ensure_identity

#: the long-poll timeout of /sync (ms)
SYNC_TIMEOUT_MS = 30_000
#: timeline events per room in one sync (fewer come with a gap, ``limited``, which a bot back-fills)
TIMELINE_LIMIT = 100
#: the longest wait between two attempts while the homeserver is unreachable
MAX_BACKOFF_S = 60.0
CREDENTIALS = "credentials.json"


class LoginRefused(Exception):
    """The server refused the bot's password login (its message says why and what to do:
    a device that is logged in elsewhere needs an operator's approval of the request it names)."""


class SyncTokens(Protocol):
    """Where a bot keeps its sync token: ``save`` is called only once a response was handled."""

    def load(self) -> str | None: ...
    def save(self, token: str) -> None: ...


class StoreSyncTokens:
    """The token in nio's own store, the table ``store_sync_tokens=True`` used: a bot that
    used that option carries on from where it was; only the session writes it now."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    def load(self) -> str | None:
        return self.client.store.load_sync_token() if self.client.store is not None else None

    def save(self, token: str) -> None:
        assert self.client.store is not None, "the store is loaded at login"
        self.client.store.save_sync_token(token)


class Session:
    """The login and sync loop of one bot; the bot adds its callbacks and its handling of a
    whole sync response (back-fill, retries) and says when it is ready."""

    def __init__(
        self,
        account: Account,
        *,
        device_name: str,
        log: logging.Logger,
        main_key: bytes,
        reset_identity: bool = False,
        client_class: type[AsyncClient] = AsyncClient,
    ) -> None:
        """``main_key`` seals the cross-signing identity at rest (the bot's state or archive key);
        ``reset_identity`` replaces the identity on the server once, at this start."""
        self.account = account
        self.identity = IdentityFile(account.identity_file, account.user_id, main_key)
        self.reset_identity = reset_identity
        self.device_name = device_name
        self.log = log
        account.store_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # store_sync_tokens stays off: nio would save the token before the callbacks ran
        self.client = client_class(
            account.homeserver_url,
            account.user_id,
            device_id=account.device_id,
            store_path=str(account.store_dir),
            config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False),
        )
        #: set by ``stop()``; every wait of the session (and of the bots' loops) ends on it
        self.stopping = asyncio.Event()
        #: True once the first sync response was handled
        self.ready = False

    def stop(self) -> None:
        self.stopping.set()

    # -- logging in -------------------------------------------------------------------------------

    @property
    def credentials(self) -> Path:
        return self.account.store_dir / CREDENTIALS

    async def login(self) -> None:
        """Restore the saved access token, or log in with the password on the enrolled device;
        then the device's keys on the server and its signature by the bot's identity."""
        if not await self._restore():
            await self._password_login()
        if await self._forget_earlier_device():
            await self._password_login()
        await self._upload_keys()
        await self._ensure_identity()

    async def _restore(self) -> bool:
        """Log in with the saved access token, if there is one and it still works."""
        account = self.account
        saved = self._load_credentials()
        if saved is None:
            return False
        self.client.restore_login(account.user_id, account.device_id, saved)
        whoami = await self.client.whoami()
        if isinstance(whoami, WhoamiResponse) and whoami.device_id == account.device_id:
            self.log.info("restored the login of device %s", account.device_id)
            return True
        why = whoami if isinstance(whoami, ErrorResponse) else "another device"
        self.log.info("the saved access token no longer works (%s); logging in again", why)
        self.client.access_token = ""
        return False

    async def _password_login(self) -> None:
        account = self.account
        self.client.device_id = account.device_id
        response = await self.client.login(account.password, device_name=self.device_name)
        if isinstance(response, LoginError):
            raise LoginRefused(
                f"the server refused the login as {account.user_id} on device {account.device_id}: "
                f"{response.message}"
            )
        if not isinstance(response, LoginResponse):
            raise RuntimeError(f"login as {account.user_id} on {account.device_id} failed: {response}")
        if response.device_id != account.device_id:
            raise RuntimeError(f"the server gave device {response.device_id}, not {account.device_id}")
        self._save_credentials(response.access_token)
        self.log.info("logged in as %s on device %s", response.user_id, response.device_id)

    async def _forget_earlier_device(self) -> bool:
        """Make the device's keys on the server this store's, where a store or a device was lost.

        A new E2EE store (the old one lost) for a device whose old keys are still on the
        server: delete that device with its keys and one-time keys (the server refuses new
        one-time keys under the old IDs), so that a login makes it anew; True then, as the
        access token went with it. A device deleted on the server (its keys with it) while
        the store kept them: upload them again."""
        olm = self.client.olm
        assert olm is not None, "the E2EE store is loaded at login"
        server = _NioKeysServer(self.client, self.account)
        user_id, device_id = self.account.user_id, self.account.device_id
        found = ServerIdentity.from_query(await server.query(user_id), user_id, device_id)
        if found.device_keys is None:
            if olm.account.shared:
                self.log.warning(
                    "the server has no keys of device %s (it was deleted): uploading them again", device_id
                )
                olm.account.shared = False
            return False
        if olm.account.shared or found.device_ed25519(device_id) == olm.account.identity_keys["ed25519"]:
            return False  # the server holds this store's keys (or another's: refused later)
        await server.delete_device(device_id)
        self.credentials.unlink(missing_ok=True)
        self.log.warning(
            "the E2EE store is new, but the server held keys of device %s from an earlier store: "
            "deleted that device (its old keys) and logging in again on it",
            device_id,
        )
        return True

    def _load_credentials(self) -> str | None:
        """The saved access token, if it is for this account and device."""
        try:
            data = json.loads(self.credentials.read_text())
        except (OSError, ValueError):
            return None
        if data.get("user_id") != self.account.user_id or data.get("device_id") != self.account.device_id:
            return None
        token = data.get("access_token")
        return token if isinstance(token, str) and token else None

    def _save_credentials(self, token: str) -> None:
        """Written 0600 and replaced atomically: a crash never leaves half a file."""
        data = {"user_id": self.account.user_id, "device_id": self.account.device_id, "access_token": token}
        temporary = self.credentials.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
        with os.fdopen(descriptor, "w") as out:
            json.dump(data, out)
        temporary.replace(self.credentials)

    async def _upload_keys(self) -> None:
        if self.client.should_upload_keys:
            response = await self.client.keys_upload()
            self.log.info("uploaded device keys: %s", type(response).__name__)

    async def _ensure_identity(self) -> None:
        """The device signed by the bot's cross-signing identity; a reset happens once."""
        assert self.client.olm is not None, "the E2EE store is loaded at login"
        await ensure_identity(
            _NioKeysServer(self.client, self.account),
            self.identity,
            device_id=self.account.device_id,
            device_ed25519=self.client.olm.account.identity_keys["ed25519"],
            reset=self.reset_identity,
            log=self.log,
        )
        self.reset_identity = False

    # -- waiting ----------------------------------------------------------------------------------

    async def until_stopped(self, work: Coroutine[Any, Any, Any]) -> bool:
        """Await ``work`` unless ``stop()`` comes first (nio retries an unreachable server
        for ever); False when stopped."""
        task = asyncio.ensure_future(work)
        done = await self._first_of(task)
        if task not in done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return False
        task.result()
        return True

    async def _first_of(self, task: asyncio.Future[Any]) -> set[asyncio.Future[Any]]:
        """Wait for ``task`` or ``stop()``, whichever comes first; the done ones. Cancelled
        itself, it cancels ``task`` too (nothing of the bot's is left running)."""
        stopping = asyncio.ensure_future(self.stopping.wait())
        try:
            done, _ = await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            stopping.cancel()
        return done

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once on ``stop()``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    # -- syncing ----------------------------------------------------------------------------------

    async def sync_forever(
        self,
        tokens: SyncTokens,
        handle: Callable[[SyncResponse], Awaitable[None]],
        on_ready: Callable[[], Awaitable[None]],
    ) -> None:
        """Sync until ``stop()``, from the saved token on; retry with back-off while the server
        is unreachable, log in again when the token was revoked.

        ``handle`` gets each response after nio ran the event callbacks; only when it returned
        is the token saved. ``on_ready`` runs once, after the first response was handled."""
        #: the token of the last response handled to the end: a failed sync or handling goes
        #: back to it (nio moves ``next_batch`` on before it handled a response)
        saved = self.client.loaded_sync_token = tokens.load() or ""
        backoff = 1.0
        #: the pause before a response whose handling failed is synced again
        handle_backoff = 1.0
        sync_filter = {"room": {"timeline": {"limit": TIMELINE_LIMIT}}}
        while not self.stopping.is_set():
            first = not self.ready
            sync = asyncio.create_task(
                self.client.sync(
                    timeout=0 if first else SYNC_TIMEOUT_MS, sync_filter=sync_filter, full_state=first
                )
            )
            if sync not in await self._first_of(sync):
                sync.cancel()
                await asyncio.gather(sync, return_exceptions=True)
                break
            try:
                response = sync.result()
            except Exception as error:  # network trouble, or nio's handling (its store) failed: retry
                self.log.warning("sync failed: %r; retrying in %.0fs", error, backoff)
                self.client.next_batch = saved
                await self.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            if isinstance(response, SyncError):
                self.log.warning("sync failed: %s; retrying in %.0fs", response, backoff)
                if response.status_code == "M_UNKNOWN_TOKEN":
                    self.credentials.unlink(missing_ok=True)
                    await self.login()
                await self.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            backoff = 1.0
            try:
                await self._keep_keys()
                await handle(response)
                # every event of this response was handled: a restart may continue after it
                tokens.save(response.next_batch)
                saved = response.next_batch
                handle_backoff = 1.0
            except Exception:
                # the same response again, from the last saved token, after a pause: going on
                # from nio's next_batch would skip what was not handled until the next restart
                self.log.exception(
                    "handling a sync response failed; syncing it again in %.0fs", handle_backoff
                )
                self.client.next_batch = saved
                await self.sleep(handle_backoff)
                handle_backoff = min(handle_backoff * 2, MAX_BACKOFF_S)
            if first:
                self.ready = True
                await on_ready()

    async def _keep_keys(self) -> None:
        """What E2EE needs after each sync: our one-time keys, others' device lists, Olm
        sessions with new devices, and the to-device messages (room keys) queued for them."""
        if self.client.should_upload_keys:
            await self.client.keys_upload()
        if self.client.should_query_keys:
            await self.client.keys_query()
        if self.client.should_claim_keys:
            await self.client.keys_claim(self.client.get_users_for_key_claiming())
        await self.client.send_to_device_messages()


class _NioKeysServer:
    """The cross-signing requests on the bot's nio client (nio has no API for them)."""

    def __init__(self, client: AsyncClient, account: Account) -> None:
        self.client = client
        self.account = account

    async def query(self, user_id: str) -> dict[str, Any]:
        return await self._post("/_matrix/client/v3/keys/query", {"device_keys": {user_id: []}})

    async def upload_signing_keys(self, body: Mapping[str, Any]) -> None:
        await self._with_password("POST", "/_matrix/client/v3/keys/device_signing/upload", body)

    async def delete_device(self, device_id: str) -> None:
        await self._with_password("DELETE", f"/_matrix/client/v3/devices/{quote(device_id, safe='')}", {})

    async def _with_password(self, method: str, path: str, body: Mapping[str, Any]) -> None:
        """A request that the server may guard with user-interactive auth: then again with the
        bot's password (replacing cross-signing keys, deleting a device)."""
        status, answer = await self._request(path, body, method)
        if status == 401 and "flows" in answer:
            auth = {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": self.account.user_id},
                "password": self.account.password,
                "session": answer.get("session"),
            }
            status, answer = await self._request(path, {**body, "auth": auth}, method)
        _check(path, status, answer)

    async def upload_signatures(self, body: Mapping[str, Any]) -> None:
        path = "/_matrix/client/v3/keys/signatures/upload"
        failures = (await self._post(path, body)).get("failures")
        if failures:
            raise IdentityError(f"{path}: the server refused the device's signature: {failures}")

    async def _post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        status, answer = await self._request(path, body)
        _check(path, status, answer)
        return answer

    async def _request(
        self, path: str, body: Mapping[str, Any], method: str = "POST"
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.client.access_token}", "Content-Type": "application/json"}
        async with await self.client.send(method, path, json.dumps(body), headers) as response:
            try:
                answer = await response.json(content_type=None)
            except ValueError:
                answer = {}
            return response.status, answer if isinstance(answer, dict) else {}


def _check(path: str, status: int, answer: Mapping[str, Any]) -> None:
    """Raise for a refused request, with the server's code and message (never the request)."""
    if status != 200:
        raise IdentityError(f"{path}: HTTP {status} {answer.get('errcode', '')}: {answer.get('error', '')}")


__all__ = ["CREDENTIALS", "Session", "StoreSyncTokens", "SyncTokens"]
