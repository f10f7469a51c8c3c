"""Synapse with workers, as plain processes: the layout of the compose file's
``workers`` profile on one machine.

A ``WorkerDeployment`` starts, in order, Redis (``redis-server`` on a loopback
port, no persistence), the main process (``synapse.app.homeserver``, with a
replication listener, on PostgreSQL), each worker
(``synapse.app.generic_worker -c homeserver.yaml -c WORKER.yaml``) and, when
asked, nginx with the stack's routing (``config/nginx/workers.conf``). The shared
settings are the ones ``config/workers/shared.yaml`` carries for the profile:
``instance_map`` (the main process's replication listener), ``redis``,
``run_background_tasks_on`` and ``worker_replication_secret``. Each process
logs to its own file in the deployment's directory.

Used by ``tests/integration/test_workers.py``; ``NginxProxy`` also runs the
default stack's edge (``config/nginx/edge.conf``) in
``tests/integration/test_proxy_headers.py``.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import yaml

from devtools.homeserver import (
    REPO_ROOT,
    Homeserver,
    HomeserverSpec,
    free_port,
    terminate,
    wait_healthy,
)

GENERIC_WORKER_APP = "synapse.app.generic_worker"
#: the routing of the compose file's workers profile
NGINX_CONFIG = REPO_ROOT / "config" / "nginx" / "workers.conf"
#: the edge of the default compose stack (one Synapse process)
EDGE_NGINX_CONFIG = REPO_ROOT / "config" / "nginx" / "edge.conf"


class RedisError(RuntimeError):
    pass


class RedisServer:
    """A throwaway ``redis-server`` on 127.0.0.1 that keeps nothing on disk."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisError("redis-server not found: install Debian's redis-server (make test does)")
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--daemonize",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RedisError(f"redis-server exited with code {self.process.returncode}; see {log.name}")
            if self.ping():
                return
            time.sleep(0.1)
        raise RedisError(f"redis-server did not answer on port {self.port} within {timeout:.0f}s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        terminate(self.process, timeout)


@attrs.define
class WorkerSpec:
    """One ``synapse.app.generic_worker`` process."""

    #: ``worker_name``, as ``instance_map`` and ``run_background_tasks_on`` name it
    name: str
    #: port of its HTTP listener (``resources`` below); every worker gets one,
    #: since ``/health`` on it tells when the worker is up
    http_port: int
    #: the listener's resources: client and federation for a generic worker,
    #: health only for the background-tasks worker (it serves no endpoint)
    resources: list[str] = attrs.field(factory=lambda: ["client", "federation"])


def worker_config(spec: WorkerSpec, directory: Path, bind_address: str = "127.0.0.1") -> dict[str, Any]:
    """The worker's own file (``config/workers/*.yaml`` in the compose stack)."""
    return {
        "worker_app": GENERIC_WORKER_APP,
        "worker_name": spec.name,
        "worker_listeners": [
            {
                "type": "http",
                "port": spec.http_port,
                "bind_addresses": [bind_address],
                "x_forwarded": True,
                "resources": [{"names": spec.resources, "compress": False}],
            }
        ],
        "worker_log_config": str(directory / f"{spec.name}.log.yaml"),
        "pid_file": str(directory / f"{spec.name}.pid"),
    }


def _log_config(path: Path) -> dict[str, Any]:
    return {
        "version": 1,
        "formatters": {
            "precise": {
                "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"
            }
        },
        "filters": {"context": {"()": "synapse.logging.context.LoggingContextFilter", "request": ""}},
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "formatter": "precise",
                "filename": str(path),
                "filters": ["context"],
                "encoding": "utf8",
            }
        },
        "loggers": {"synapse.storage.SQL": {"level": "WARNING"}},
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }


class Worker:
    """A running generic worker that reads the main process's homeserver.yaml
    (the shared config) and its own file."""

    def __init__(self, spec: WorkerSpec, directory: Path, shared_config: Path) -> None:
        self.spec = spec
        self.directory = directory
        self.shared_config = shared_config
        self.config_path = directory / f"{spec.name}.yaml"
        (directory / f"{spec.name}.log.yaml").write_text(
            yaml.safe_dump(_log_config(self.log_path), sort_keys=False)
        )
        self.config_path.write_text(yaml.safe_dump(worker_config(spec, directory), sort_keys=False))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.spec.http_port}"

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.spec.name}.log"

    def start(self, timeout: float = 120.0) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        output = (self.directory / f"{self.spec.name}.stdout.log").open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                GENERIC_WORKER_APP,
                "-c",
                str(self.shared_config),
                "-c",
                str(self.config_path),
            ],
            cwd=self.directory,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        wait_healthy(
            self.process, self.url, timeout, f"worker {self.spec.name}", f"{output.name} and {self.log_path}"
        )

    def stop(self, timeout: float = 30.0) -> None:
        terminate(self.process, timeout)


class NginxError(RuntimeError):
    pass


class NginxProxy:
    """nginx with a shipped config (``config/nginx/workers.conf`` unless told
    otherwise), its upstream hosts (compose service names) replaced by
    loopback ports, listening on 127.0.0.1:``port``.

    ``real_ip_from`` turns on the config's commented ``set_real_ip_from`` and
    ``real_ip_header`` lines with that address, as docs/operator.md tells an
    operator with a balancer in front to do.
    """

    def __init__(
        self,
        directory: Path,
        port: int,
        upstreams: dict[str, int],
        *,
        config: Path = NGINX_CONFIG,
        real_ip_from: str | None = None,
    ) -> None:
        self.directory = directory
        self.port = port
        self.upstreams = upstreams
        self.config = config
        self.real_ip_from = real_ip_from
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rendered(self) -> str:
        """The shipped config with loopback upstreams and listen address."""
        text = self.config.read_text()
        named = set(re.findall(r"^\s*server ([a-z0-9-]+):\d+;", text, re.M))
        if named != set(self.upstreams):
            raise NginxError(f"{self.config} names {sorted(named)}, expected {sorted(self.upstreams)}")
        for host, port in self.upstreams.items():
            text = re.sub(
                rf"^(\s*server ){re.escape(host)}:\d+;", rf"\g<1>127.0.0.1:{port};", text, flags=re.M
            )
        text, count = re.subn(r"^(\s*)listen \d+;", rf"\g<1>listen 127.0.0.1:{self.port};", text, flags=re.M)
        if count != 1:
            raise NginxError(f"{self.config}: expected one listen directive")
        if self.real_ip_from is not None:
            text, count = re.subn(
                r"^(\s*)# (set_real_ip_from) \S+;\n\s*# (real_ip_header X-Forwarded-For;)$",
                rf"\g<1>\g<2> {self.real_ip_from};\n\g<1>\g<3>",
                text,
                flags=re.M,
            )
            if count != 1:
                raise NginxError(f"{self.config}: expected the commented real_ip lines of the balancer")
        return text

    def write_config(self) -> Path:
        text = self.rendered()
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / self.config.name).write_text(text)
        temp = self.directory / "temp"
        temp.mkdir(exist_ok=True)
        main = self.directory / "nginx.conf"
        main.write_text(
            f"""daemon off;
pid {self.directory / "nginx.pid"};
error_log {self.directory / "error.log"} info;
events {{}}
http {{
    access_log {self.directory / "access.log"};
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {self.directory / self.config.name};
}}
"""
        )
        return main

    def start(self, timeout: float = 15.0) -> None:
        binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if binary is None:
            raise NginxError("nginx not found: install Debian's nginx-light (make test does)")
        config = self.write_config()
        self.process = subprocess.Popen(
            [binary, "-c", str(config), "-p", str(self.directory)],
            stdout=(self.directory / "stdout.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NginxError(f"nginx exited with code {self.process.returncode}; see {self.directory}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise NginxError(f"nginx did not listen on port {self.port} within {timeout:.0f}s")

    def stop(self, timeout: float = 10.0) -> None:
        terminate(self.process, timeout, signal.SIGQUIT)  # nginx: graceful shutdown


def shared_worker_settings(
    *, replication_port: int, redis_port: int, background_worker: str | None, replication_secret: str
) -> dict[str, Any]:
    """The top-level settings every process of a worker setup reads."""
    settings: dict[str, Any] = {
        "instance_map": {"main": {"host": "127.0.0.1", "port": replication_port}},
        "redis": {"enabled": True, "host": "127.0.0.1", "port": redis_port},
        "worker_replication_secret": replication_secret,
    }
    if background_worker is not None:
        settings["run_background_tasks_on"] = background_worker
    return settings


class WorkerDeployment:
    """Redis, the main process and its workers, started and stopped together.

    ``database`` is a Synapse ``database`` section for PostgreSQL (workers
    cannot share SQLite). ``background_worker`` names the worker that runs
    background tasks (it must be one of ``workers``); None leaves them on the
    main process. ``proxy`` starts nginx with the compose stack's routing in
    front of them: each upstream host of ``config/nginx/workers.conf`` (a
    compose service name) -> "main" or a worker name.
    """

    def __init__(
        self,
        directory: Path,
        *,
        server_name: str,
        database: dict[str, Any],
        module_config: dict[str, Any] | None,
        workers: list[WorkerSpec],
        background_worker: str | None,
        extra: dict[str, Any] | None = None,
        proxy: dict[str, str] | None = None,
    ) -> None:
        if background_worker is not None and background_worker not in {w.name for w in workers}:
            raise ValueError(f"background_worker {background_worker!r} is not among the workers")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(directory / "redis", free_port())
        replication_port = free_port()
        shared = shared_worker_settings(
            replication_port=replication_port,
            redis_port=self.redis.port,
            background_worker=background_worker,
            replication_secret=secrets.token_urlsafe(24),
        )
        self.main = Homeserver(
            HomeserverSpec(
                directory=directory / "main",
                server_name=server_name,
                http_port=free_port(),
                metrics_port=free_port(),
                module_config=module_config,
                database=database,
                x_forwarded=True,
                extra={**shared, **(extra or {})},
                extra_listeners=[
                    {
                        "port": replication_port,
                        "bind_addresses": ["127.0.0.1"],
                        "type": "http",
                        "resources": [{"names": ["replication"], "compress": False}],
                    }
                ],
            )
        )
        self.workers = {
            spec.name: Worker(spec, directory / "main", self.main.config_path) for spec in workers
        }
        self.proxy: NginxProxy | None = None
        if proxy is not None:
            ports = {"main": self.main.spec.http_port, **{w.name: w.http_port for w in workers}}
            self.proxy = NginxProxy(
                directory / "nginx", free_port(), {host: ports[name] for host, name in proxy.items()}
            )

    def start(self) -> None:
        """Redis, the main process (it creates the schema), the workers, nginx."""
        try:
            self.redis.start()
            self.main.start()
            for worker in self.workers.values():
                worker.start()
            if self.proxy is not None:
                self.proxy.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        for worker in reversed(list(self.workers.values())):
            worker.stop()
        self.main.stop()
        self.redis.stop()

    def worker(self, name: str) -> Worker:
        return self.workers[name]

    def log_paths(self) -> dict[str, Path]:
        """Each process's log by name ("main" and the worker names)."""
        return {"main": self.main.log_path, **{name: w.log_path for name, w in self.workers.items()}}
