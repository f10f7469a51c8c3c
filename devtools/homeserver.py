"""Real Synapse processes for development, tests and benchmarks.

One place writes a homeserver config that matches the policy module, starts
``synapse.app.homeserver`` with the module from this working tree, waits until
it answers, creates users through the shared-secret admin API and stops it.
``make run``, the pytest fixtures and ``bench/`` all use it.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from signedjson.key import generate_signing_key, write_signing_keys

from devtools.ports import free_port as free_port  # the servers started here take their ports from it
from synapse_police_policy.api import MODULE_NAME
from synapse_police_policy.config import ConfigError, MediaConfig, parse_config
from synapse_police_policy.ops.bootstrap import connect_database, enroll_directly

REPO_ROOT = Path(__file__).resolve().parent.parent
MODULE_CLASS = MODULE_NAME

#: Generous limits so tests and benchmarks measure the policy, not the rate limiter.
_UNLIMITED = {"per_second": 10000, "burst_count": 100000}
TEST_RATE_LIMITS: dict[str, Any] = {
    "rc_message": _UNLIMITED,
    "rc_registration": _UNLIMITED,
    "rc_login": {"address": _UNLIMITED, "account": _UNLIMITED, "failed_attempts": _UNLIMITED},
    "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
    "rc_joins_per_room": _UNLIMITED,
    "rc_invites": {"per_room": _UNLIMITED, "per_user": _UNLIMITED, "per_issuer": _UNLIMITED},
    "rc_room_creation": _UNLIMITED,
    "rc_admin_redaction": _UNLIMITED,
    "rc_key_requests": _UNLIMITED,
    "rc_media_create": _UNLIMITED,
    "rc_presence": {"per_user": _UNLIMITED},
}


def send(request: urllib.request.Request, timeout: float = 30, context: Any = None) -> tuple[int, Any]:
    """Send a prepared request; (status, the body as JSON, or as text when it is not JSON).
    Error statuses are answers too, not exceptions."""
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf8", "replace")


def _max_upload_size(module_config: Mapping[str, Any]) -> str:
    """Synapse's own body limit must admit the largest file the policy allows.
    A broken module config (tests of start-up errors) gets the defaults here;
    Synapse reports the error itself."""
    try:
        return parse_config(module_config).media.synapse_max_upload_size
    except ConfigError:
        return MediaConfig().synapse_max_upload_size


def audit_tier_settings(audit: str, purge_interval: str = "1h") -> dict[str, Any]:
    """Synapse's retention settings for the audit tier: rooms announce the device tier
    in m.room.retention; the server keeps history until the audit tier by clamping
    purges to it. Tests with tiers of seconds purge more often."""
    return {
        "retention": {
            "enabled": True,
            "default_policy": {"max_lifetime": audit},
            "allowed_lifetime_min": audit,
            "allowed_lifetime_max": audit,
            "purge_jobs": [{"interval": purge_interval}],
        },
        "redaction_retention_period": audit,
    }


def policy_aligned_settings(server_name: str, module_config: Mapping[str, Any]) -> dict[str, Any]:
    """Homeserver settings that carry the part of the policy Synapse enforces
    itself; ``police-policy check-config`` accepts exactly these."""
    federation = module_config.get("federation") or {}
    retention = module_config.get("retention") or {}
    audit = retention.get("audit_lifetime", "90d")
    return {
        "federation_domain_whitelist": sorted({server_name, *federation.get("allowed_servers", [])}),
        "trusted_key_servers": [],
        "allow_public_rooms_over_federation": False,
        "enable_registration": False,
        "url_preview_enabled": False,
        "encryption_enabled_by_default_for_room_type": "all",
        "room_list_publication_rules": [{"action": "deny"}],
        "max_upload_size": _max_upload_size(module_config),
        **audit_tier_settings(audit),
    }


@attrs.define
class HomeserverSpec:
    """What differs between the homeservers we start."""

    directory: Path
    server_name: str
    http_port: int
    metrics_port: int | None = None
    bind_address: str = "127.0.0.1"
    #: TLS federation listener on bind_address (self-signed certificate); None: no federation
    federation_port: int | None = None
    #: config of the police policy module; None starts Synapse without it
    module_config: dict[str, Any] | None = attrs.field(factory=dict)
    #: Synapse ``database`` section; None means SQLite in ``directory``
    database: dict[str, Any] | None = None
    #: extra top-level homeserver settings, applied last
    extra: dict[str, Any] = attrs.field(factory=dict)
    #: log handler to stdout as well as the file (for ``make run``)
    console_log: bool = False
    #: lift rate limits and response caches, cheap password hashing (tests and benchmarks)
    for_tests: bool = True
    #: the client listener trusts X-Forwarded-For (as behind a reverse proxy)
    x_forwarded: bool = False
    #: more listeners, appended after the ones above (e.g. the replication
    #: listener the main process of a worker setup needs)
    extra_listeners: list[dict[str, Any]] = attrs.field(factory=list)


def _log_config(spec: HomeserverSpec) -> dict[str, Any]:
    handlers: dict[str, Any] = {
        "file": {
            "class": "logging.FileHandler",
            "formatter": "precise",
            "filename": str(spec.directory / "homeserver.log"),
            "filters": ["context"],
            "encoding": "utf8",
        }
    }
    loggers: dict[str, Any] = {"synapse.storage.SQL": {"level": "WARNING"}}
    if spec.console_log:
        handlers["console"] = {
            "class": "logging.StreamHandler",
            "formatter": "short",
            "stream": "ext://sys.stdout",
            "filters": ["context"],
        }
        loggers["synapse_police_policy"] = {"level": "INFO", "handlers": ["console"]}
        loggers["synapse.app"] = {"level": "WARNING", "handlers": ["console"]}
    return {
        "version": 1,
        "formatters": {
            "precise": {
                "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"
            },
            "short": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"},
        },
        "filters": {"context": {"()": "synapse.logging.context.LoggingContextFilter", "request": ""}},
        "handlers": handlers,
        "loggers": loggers,
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }


def write_config(spec: HomeserverSpec) -> Path:
    """Write homeserver.yaml, the log config and (once) the keys and secrets.

    Secrets and the signing key are kept when they exist, so a directory can be
    reused across restarts without losing data.
    """
    directory = spec.directory
    directory.mkdir(parents=True, exist_ok=True)
    signing_key = directory / "signing.key"
    if not signing_key.exists():
        with signing_key.open("w") as fh:
            write_signing_keys(fh, [generate_signing_key("a_" + secrets.token_hex(2))])
    secrets_file = directory / "secrets.json"
    if secrets_file.exists():
        stored = json.loads(secrets_file.read_text())
    else:
        stored = {name: secrets.token_urlsafe(32) for name in ("registration", "macaroon", "form")}
        secrets_file.write_text(json.dumps(stored))
        secrets_file.chmod(0o600)
    log_config = directory / "log.yaml"
    log_config.write_text(yaml.safe_dump(_log_config(spec), sort_keys=False))

    listeners: list[dict[str, Any]] = [
        {
            "port": spec.http_port,
            "bind_addresses": [spec.bind_address],
            "type": "http",
            "tls": False,
            "x_forwarded": spec.x_forwarded,
            "resources": [{"names": ["client", "federation"], "compress": False}],
        }
    ]
    federation: dict[str, Any] = {}
    if spec.federation_port is not None:
        certificate, key = _self_signed_certificate(directory, spec.bind_address)
        listeners.append(
            {
                "port": spec.federation_port,
                "bind_addresses": [spec.bind_address],
                "type": "http",
                "tls": True,
                "resources": [{"names": ["federation"], "compress": False}],
            }
        )
        # Peers on this machine: loopback addresses, self-signed certificates.
        federation = {
            "tls_certificate_path": str(certificate),
            "tls_private_key_path": str(key),
            "federation_verify_certificates": False,
            "ip_range_whitelist": ["127.0.0.0/8"],
            # Server names that are IP literals are checked against this list
            # only (the whitelist above does not apply to them).
            "federation_ip_range_blacklist": [],
            "trusted_key_servers": [],
        }
    if spec.metrics_port is not None:
        listeners.append(
            {"port": spec.metrics_port, "bind_addresses": [spec.bind_address], "type": "metrics"}
        )

    listeners.extend(spec.extra_listeners)

    config: dict[str, Any] = {
        "server_name": spec.server_name,
        "public_baseurl": f"http://{spec.bind_address}:{spec.http_port}/",
        "pid_file": str(directory / "homeserver.pid"),
        "listeners": listeners,
        "database": spec.database
        or {"name": "sqlite3", "args": {"database": str(directory / "homeserver.db")}},
        "log_config": str(log_config),
        "media_store_path": str(directory / "media_store"),
        "signing_key_path": str(signing_key),
        "registration_shared_secret": stored["registration"],
        "macaroon_secret_key": stored["macaroon"],
        "form_secret": stored["form"],
        "report_stats": False,
        "suppress_key_server_warning": True,
        "enable_metrics": spec.metrics_port is not None,
        "modules": [],
    }
    config.update(federation)
    module_config = spec.module_config
    if module_config is not None:
        config["modules"] = [{"module": MODULE_CLASS, "config": module_config}]
        config.update(policy_aligned_settings(spec.server_name, module_config))
    if spec.for_tests:
        config.update(TEST_RATE_LIMITS)
        config["caches"] = {"sync_response_cache_duration": 0}
        config["bcrypt_rounds"] = 4
    config.update(spec.extra)
    path = directory / "homeserver.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _self_signed_certificate(directory: Path, address: str) -> tuple[Path, Path]:
    """A certificate for the federation listener, made once per directory."""
    certificate_path, key_path = directory / "tls.crt", directory / "tls.key"
    if certificate_path.exists() and key_path.exists():
        return certificate_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    certificate_path.write_bytes(certificate.public_bytes(pem))
    return certificate_path, key_path


def terminate(process: subprocess.Popen[bytes] | None, timeout: float, sig: int = signal.SIGTERM) -> None:
    """Stop a child process with ``sig``; kill it when it does not exit in time."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_healthy(
    process: subprocess.Popen[bytes] | None, url: str, timeout: float, name: str, logs: str
) -> None:
    """Poll Synapse's ``/health`` until it answers; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SynapseError(f"{name} exited with code {process.returncode} while starting; see {logs}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise SynapseError(f"{name} did not answer on {url} within {timeout:.0f}s; see {logs}")


class SynapseError(RuntimeError):
    pass


class Homeserver:
    """A running Synapse process with the config of ``spec``."""

    def __init__(self, spec: HomeserverSpec) -> None:
        self.spec = spec
        self.config_path = write_config(spec)
        self.process: subprocess.Popen[bytes] | None = None
        self._registration_secret = json.loads((spec.directory / "secrets.json").read_text())["registration"]

    @property
    def url(self) -> str:
        return f"http://{self.spec.bind_address}:{self.spec.http_port}"

    @property
    def server_name(self) -> str:
        return self.spec.server_name

    @property
    def log_path(self) -> Path:
        return self.spec.directory / "homeserver.log"

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    def start(
        self,
        timeout: float = 120.0,
        *,
        foreground_output: bool = False,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        output = None if foreground_output else (self.spec.directory / "stdout.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
            cwd=self.spec.directory,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            preexec_fn=preexec_fn,
        )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        logs = f"{self.spec.directory / 'stdout.log'} and {self.log_path}"
        wait_healthy(self.process, self.url, timeout, "Synapse", logs)

    def stop(self, timeout: float = 30.0, *, already_signalled: bool = False) -> None:
        """Stop Synapse with SIGTERM, or wait for it when Ctrl-C already reached
        it (a terminal signals the whole foreground process group)."""
        if self.process is None:
            return
        if already_signalled:
            try:
                self.process.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                pass
        terminate(self.process, timeout)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        base: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """A plain HTTP call; returns (status, decoded JSON body or raw text)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{base or self.url}{path}", data=data, method=method)
        req.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        return send(req)

    def register_user(
        self, localpart: str, password: str, *, admin: bool = False, login: bool = True
    ) -> str | None:
        """Create a user with the shared secret; returns None when the user
        already exists, else the access token of the device the registration
        creates (not enrolled), or "" with ``login=False`` (no device)."""
        _, nonce_body = self.request("GET", "/_synapse/admin/v1/register")
        nonce = nonce_body["nonce"]
        message = "\x00".join([nonce, localpart, password, "admin" if admin else "notadmin"])
        mac = hmac.new(self._registration_secret.encode(), message.encode(), digestmod=hashlib.sha1)
        status, body = self.request(
            "POST",
            "/_synapse/admin/v1/register",
            {
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
                "inhibit_login": not login,
            },
        )
        if status == 400 and isinstance(body, dict) and body.get("errcode") == "M_USER_IN_USE":
            return None
        if status != 200:
            raise SynapseError(f"registering {localpart!r} failed: HTTP {status} {body}")
        return body.get("access_token", "")

    def exempt_from_rate_limits(self, user_id: str, admin_token: str) -> None:
        """Lift Synapse's message rate limit for a bot (the admin API's per-user override):
        a dispatch flow of a card, an alert and a board edit must not wait for 429s."""
        status, body = self.request(
            "POST",
            f"/_synapse/admin/v1/users/{quote(user_id, safe='')}/override_ratelimit",
            {"messages_per_second": 0, "burst_count": 0},
            token=admin_token,
        )
        if status != 200:
            raise SynapseError(f"lifting the rate limit of {user_id} failed: HTTP {status} {body}")

    def enroll(self, localpart: str, device_id: str, label: str = "test device") -> None:
        """Enroll a device straight in the database (``police-policy devices bootstrap``)."""
        homeserver = yaml.safe_load(self.config_path.read_text())
        enroll_directly(homeserver, self.user_id(localpart), device_id, label)

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read Synapse's database (SQLite or PostgreSQL) with ``?`` placeholders."""
        homeserver = yaml.safe_load(self.config_path.read_text())
        connection, qmark = connect_database(homeserver["database"])
        try:
            cursor = connection.cursor()
            cursor.execute(sql if qmark else sql.replace("?", "%s"), args)
            return [tuple(row) for row in cursor.fetchall()]
        finally:
            connection.close()

    def register_enrolled_user(
        self, localpart: str, password: str, *, admin: bool = False
    ) -> tuple[str, str]:
        """Create a user and log it in on an enrolled device: (access token, device ID)."""
        self.register_user(localpart, password, admin=admin, login=False)
        device_id = f"ENROLLED-{secrets.token_hex(4).upper()}"
        self.enroll(localpart, device_id)
        answer = self.login(localpart, password, device_id)
        return answer["access_token"], device_id

    def try_login(
        self,
        localpart: str,
        password: str,
        device_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """A password login as Element sends it (no device ID unless given)."""
        body: dict[str, Any] = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": password,
            "initial_device_display_name": "test client",
        }
        if device_id:
            body["device_id"] = device_id
        return self.request("POST", "/_matrix/client/v3/login", body, headers=headers)

    def login(self, localpart: str, password: str, device_id: str | None = None) -> dict[str, Any]:
        status, answer = self.try_login(localpart, password, device_id)
        if status != 200:
            raise SynapseError(f"login of {localpart!r} failed: HTTP {status} {answer}")
        return answer
