"""The homeserver's media endpoints the bots call beside nio: authenticated download and the
admin API's quarantine. Requests go through nio's HTTP session (its TLS settings and timeouts)."""

from __future__ import annotations

import re
from urllib.parse import quote

from nio import AsyncClient

#: mxc://<server name>/<media ID>, as the spec allows them
MXC = re.compile(r"mxc://(?P<server>[A-Za-z0-9.:\[\]-]+)/(?P<media>[A-Za-z0-9_-]+)")
DOWNLOAD_TIMEOUT_S = 60.0
ADMIN_TIMEOUT_S = 30.0


class MediaApiError(Exception):
    """The homeserver refused a media request (status and error code; never the media)."""


def parse_mxc(mxc: str) -> tuple[str, str]:
    """(server name, media ID) of an mxc URL; ValueError for anything else."""
    match = MXC.fullmatch(mxc)
    if match is None:
        raise ValueError("not an mxc:// URL")
    return match["server"], match["media"]


def _path(mxc: str) -> str:
    server, media = parse_mxc(mxc)
    return f"{quote(server, safe='')}/{quote(media, safe='')}"


class MediaApi:
    """Media requests of one bot: downloads as the bot, quarantine with the admin token."""

    def __init__(self, client: AsyncClient, admin_token: str | None = None) -> None:
        self.client = client
        self.admin_token = admin_token

    async def download(self, mxc: str) -> bytes:
        """The file's bytes as stored (ciphertext for an encrypted attachment)."""
        path = f"/_matrix/client/v1/media/download/{_path(mxc)}"
        headers = {"Authorization": f"Bearer {self.client.access_token}"}
        async with await self.client.send(
            "GET", path, headers=headers, timeout=DOWNLOAD_TIMEOUT_S
        ) as response:
            if response.status != 200:
                raise MediaApiError(f"download: HTTP {response.status}")
            body: bytes = await response.read()
            return body

    async def quarantine(self, mxc: str) -> None:
        """The media can no longer be downloaded (Synapse keeps it for the operators)."""
        if self.admin_token is None:
            raise MediaApiError("quarantine: no admin token configured")
        path = f"/_synapse/admin/v1/media/quarantine/{_path(mxc)}"
        headers = {"Authorization": f"Bearer {self.admin_token}", "Content-Type": "application/json"}
        async with await self.client.send("POST", path, "{}", headers, timeout=ADMIN_TIMEOUT_S) as response:
            if response.status != 200:
                try:
                    errcode = (await response.json(content_type=None)).get("errcode", "")
                except Exception:
                    errcode = ""
                raise MediaApiError(f"quarantine: HTTP {response.status} {errcode}".rstrip())


__all__ = ["MediaApi", "MediaApiError", "parse_mxc"]
