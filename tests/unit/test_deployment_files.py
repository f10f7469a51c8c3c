"""The deployment files an operator edits and runs: docker-compose.yml (checked
with Debian's docker-compose, which needs no Docker engine for ``config``),
the files it mounts and builds from, config/homeserver.yaml (police-policy
check-config, and Synapse's own config loader for the main process and every
worker of the workers profile), Element Web's config, the Element iOS managed
app configuration and the dispatch bot's production config."""

from __future__ import annotations

import fnmatch
import json
import os
import plistlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from signedjson.key import generate_signing_key, write_signing_keys

from devtools.homeserver import REPO_ROOT
from synapse_police_policy.ops.check_config import find_problems
from synapse_police_policy.ops.cli import main as police_policy

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
HOMESERVER = REPO_ROOT / "config" / "homeserver.yaml"
WORKERS_DIR = REPO_ROOT / "config" / "workers"
NGINX_DIR = REPO_ROOT / "config" / "nginx"
#: nginx service -> its config: each is the hop Synapse believes about client addresses
NGINX_CONFIGS = {"edge": NGINX_DIR / "edge.conf", "nginx": NGINX_DIR / "workers.conf"}
BASE_SERVICES = {"postgres", "synapse", "edge", "element-web", "auditor-bot", "dispatch-bot"}
WORKER_SERVICES = {
    "redis",
    "generic-worker1",
    "generic-worker2",
    "federation-sender1",
    "background-worker",
    "nginx",
}
#: worker service -> the worker_name its config file gives it
WORKER_NAMES = {
    "generic-worker1": "generic_worker1",
    "generic-worker2": "generic_worker2",
    "federation-sender1": "federation_sender1",
    "background-worker": "background_worker",
}


def docker_compose(*args: str, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess[str]:
    """Debian's docker-compose in a clean environment (no .env of a developer,
    no DOCKER_HOST: ``config`` never talks to an engine)."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose not found: make test installs Debian's docker-compose")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def resolved(*args: str) -> dict[str, Any]:
    result = docker_compose(*args, "config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return resolved()


@pytest.fixture(scope="module")
def compose_with_workers() -> dict[str, Any]:
    return resolved("--profile", "workers")


def test_compose_file_validates_with_and_without_the_workers_profile(
    compose: dict[str, Any], compose_with_workers: dict[str, Any]
) -> None:
    services = compose["services"]
    assert set(services) == BASE_SERVICES | WORKER_SERVICES
    # docker-compose 1.29's `config` lists every service; the profile decides what runs.
    for name in BASE_SERVICES:
        assert not services[name].get("profiles"), name
    for name in WORKER_SERVICES:
        assert services[name].get("profiles") == ["workers"], name
    assert set(compose_with_workers["services"]) == BASE_SERVICES | WORKER_SERVICES


def test_a_missing_secret_stops_docker_compose(tmp_path: Path) -> None:
    lines = [
        line for line in ENV_EXAMPLE.read_text().splitlines() if not line.startswith("POSTGRES_PASSWORD=")
    ]
    env_file = tmp_path / "env"
    env_file.write_text("\n".join(lines) + "\n")
    result = docker_compose("config", env_file=env_file)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


def test_every_service_has_a_health_check_and_state_is_in_named_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
    declared = set(compose["volumes"])
    assert declared == {"postgres-data", "synapse-data", "synapse-media", "auditor-data", "dispatch-data"}
    expected = {
        "postgres": {"postgres-data": "/var/lib/postgresql/data"},
        "synapse": {"synapse-data": "/data", "synapse-media": "/media_store"},
        "background-worker": {"synapse-data": "/data", "synapse-media": "/media_store"},
        "auditor-bot": {"auditor-data": "/var/lib/police-auditor"},
        "dispatch-bot": {"dispatch-data": "/var/lib/police-dispatch"},
    }
    for name, volumes in expected.items():
        mounted = {
            volume["source"]: volume["target"]
            for volume in _volumes(services[name])
            if volume.get("type") == "volume"
        }
        assert mounted == volumes, name


def _volumes(service: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Volume entries in long form (docker-compose 1.29 prints the short form)."""
    entries = []
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            entries.append(entry)
            continue
        source, target, *mode = entry.split(":")
        kind = "bind" if source.startswith(("/", ".")) else "volume"
        entries.append({"type": kind, "source": source, "target": target, "read_only": mode == ["ro"]})
    return entries


def test_every_file_the_stack_mounts_or_builds_from_exists(compose: dict[str, Any]) -> None:
    checked = 0
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = Path(build["context"])
            assert context.is_dir(), name
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile}"
            checked += _check_dockerfile(dockerfile, context)
        for volume in _volumes(service):
            if volume["type"] == "bind":
                source = Path(volume["source"])
                if not source.is_absolute():
                    source = REPO_ROOT / source
                assert source.exists(), f"{name} mounts {source}, which does not exist"
                assert volume["read_only"], f"{name}: {source} should be mounted read-only"
                checked += 1
    assert checked >= 10


def _check_dockerfile(dockerfile: Path, context: Path) -> int:
    """Every COPY source of a Dockerfile exists in its build context and is
    not left out of it by .dockerignore."""
    ignore_file = context / ".dockerignore"
    ignored = [
        line.strip()
        for line in (ignore_file.read_text().splitlines() if ignore_file.exists() else [])
        if line.strip() and not line.startswith("#")
    ]
    count = 0
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY "):
            *sources, _ = line.split()[1:]
            for source in sources:
                assert (context / source).exists(), f"{dockerfile}: COPY {source}: not in the build context"
                top = Path(source).parts[0]
                assert not any(fnmatch.fnmatch(top, pattern) for pattern in ignored), (
                    f"{dockerfile}: COPY {source}: excluded by .dockerignore"
                )
                count += 1
    return count


def test_config_files_named_by_the_containers_exist(compose: dict[str, Any]) -> None:
    """The commands and entrypoint arguments name files under /config (the
    repository's config/ directory, mounted read-only)."""
    services = compose["services"]
    for name in ("auditor-bot", "dispatch-bot"):
        command = services[name]["command"]
        config = command[command.index("-c") + 1]
        assert config.startswith("/config/")
        assert (REPO_ROOT / "config" / config.removeprefix("/config/")).is_file(), config
    for service, worker_name in WORKER_NAMES.items():
        assert services[service]["command"] == ["worker", worker_name]
        worker = yaml.safe_load((WORKERS_DIR / f"{worker_name}.yaml").read_text())
        assert worker["worker_name"] == worker_name
        assert worker["worker_app"] == "synapse.app.generic_worker"
    for service, config in NGINX_CONFIGS.items():
        nginx = config.read_text()
        hosts = re.findall(r"^\s*server ([a-z0-9-]+):\d+;", nginx, re.M)
        assert hosts, config
        for host in hosts:
            assert host in services, f"{config.name} names {host}, which is no service"
        [mount] = [v for v in _volumes(services[service]) if v["target"] == "/etc/nginx/conf.d/default.conf"]
        assert Path(mount["source"]).resolve() == config.resolve(), service


# -- The reverse proxy -------------------------------------------------------------


def _directives(config: Path) -> list[str]:
    """The config's directives, comments and blank lines left out."""
    lines = (line.split("#", 1)[0].strip() for line in config.read_text().splitlines())
    return [line for line in lines if line]


@pytest.mark.parametrize("service", sorted(NGINX_CONFIGS))
def test_every_nginx_config_overwrites_the_client_address(service: str) -> None:
    """Synapse (x_forwarded: true) takes the left-most X-Forwarded-For entry:
    the hop in front of it must set the header, not append to the client's.
    The lines are the ones docs/operator.md shows; tests/integration/
    test_proxy_headers.py runs each config in a real nginx."""
    config = NGINX_CONFIGS[service]
    directives = _directives(config)
    assert not any("$proxy_add_x_forwarded_for" in line for line in directives), config
    for line in (
        "proxy_set_header X-Forwarded-For $remote_addr;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Forwarded-Proto https;",
        'proxy_set_header Forwarded "";',
    ):
        assert directives.count(line) == 1, f"{config.name}: {line}"
    # Set once for the server: a location with its own proxy_set_header would
    # drop these (nginx inherits them only into locations that set none).
    assert sum(line.startswith("proxy_set_header") for line in directives) == 5, config
    # The recipe for a balancer in front is there, commented out (no address to trust by default).
    text = config.read_text()
    assert re.search(r"^\s*# set_real_ip_from \S+;\n\s*# real_ip_header X-Forwarded-For;$", text, re.M)
    assert not any(line.startswith(("set_real_ip_from", "real_ip_header")) for line in directives)
    guide = (REPO_ROOT / "docs" / "operator.md").read_text()
    for line in (
        "proxy_set_header X-Forwarded-For $remote_addr;",
        "set_real_ip_from",
        "real_ip_header X-Forwarded-For;",
    ):
        assert line in guide, f"docs/operator.md does not show {line}"


def test_only_nginx_publishes_synapse(compose: dict[str, Any]) -> None:
    """The listener believes X-Forwarded-For, so no port of a Synapse process
    is published; the TLS proxy connects to the edge (or the workers' nginx)."""
    services = compose["services"]
    homeserver = yaml.safe_load(HOMESERVER.read_text())
    assert any(listener.get("x_forwarded") for listener in homeserver["listeners"])
    for name, service in services.items():
        if service.get("command", [None])[0] in ("main", "worker"):
            assert not service.get("ports"), f"{name} publishes a port of Synapse"
    assert {name for name, service in services.items() if service.get("ports")} == {
        "edge",
        "nginx",
        "element-web",
    }
    # docker-compose 1.29 prints "127.0.0.1:8008:8080/tcp"; the edge listens on 8080 (edge.conf)
    [edge] = services["edge"]["ports"]
    target = edge["target"] if isinstance(edge, dict) else str(edge).rsplit(":", 1)[1].split("/")[0]
    assert int(target) == 8080
    assert "listen 8080;" in _directives(NGINX_CONFIGS["edge"])


def test_secrets_are_not_committed() -> None:
    ignored = (REPO_ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in ignored
    for line in ENV_EXAMPLE.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            name, value = line.split("=", 1)
            if any(word in name for word in ("PASSWORD", "SECRET", "KEY")):
                assert value.startswith("change-me"), f"{name} in .env.example must be a placeholder"
    text = HOMESERVER.read_text()
    for key in ("registration_shared_secret", "macaroon_secret_key", "form_secret"):
        assert re.search(rf"^{key}_path: /run/police-secrets/", text, re.M), key
        assert not re.search(rf"^{key}:", text, re.M), key
    assert "password:" not in text


# -- config/homeserver.yaml ------------------------------------------------------


def test_production_homeserver_config_passes_check_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert police_policy(["check-config", str(HOMESERVER)]) == 0
    assert "consistent with the police policy" in capsys.readouterr().out


def test_adding_a_peer_as_the_runbook_says_keeps_check_config_quiet() -> None:
    """docs/operator.md, "Adding an allowed peer homeserver": the three places."""
    homeserver = yaml.safe_load(HOMESERVER.read_text())
    peer = "polizei-by.example"
    homeserver["modules"][0]["config"]["federation"]["allowed_servers"].append(peer)
    homeserver["federation_domain_whitelist"].append(peer)
    homeserver["trusted_key_servers"] = [
        {
            "server_name": peer,
            "verify_keys": {"ed25519:a_AbCd": "l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ"},
        }
    ]
    assert find_problems(homeserver) == []
    homeserver["federation_domain_whitelist"].remove(peer)
    assert [f.key for f in find_problems(homeserver)] == ["federation_domain_whitelist"]


@pytest.fixture
def container_paths(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """The containers' paths mapped into a temporary directory, with the
    secret files and the signing key the entrypoint would provide."""
    paths = {
        "/run/police-secrets/": tmp_path / "secrets",
        "/data/": tmp_path / "data",
        "/media_store": tmp_path / "media_store",
    }
    for path in paths.values():
        path.mkdir()
    for name in (
        "registration_shared_secret",
        "macaroon_secret_key",
        "form_secret",
        "worker_replication_secret",
        "redis_password",
    ):
        (paths["/run/police-secrets/"] / name).write_text(f"test-{name}")
    with (paths["/data/"] / "signing.key").open("w") as handle:
        write_signing_keys(handle, [generate_signing_key("a_test")])
    yield paths


def _in_container_paths(source: Path, paths: Mapping[str, Path], target: Path) -> Path:
    text = source.read_text()
    for container, local in paths.items():
        text = text.replace(container, f"{local}/" if container.endswith("/") else str(local))
    text = text.replace("/config/", f"{REPO_ROOT / 'config'}/")
    target.write_text(text)
    return target


def _load_synapse_config(files: list[Path]) -> Any:
    from synapse.config.homeserver import HomeServerConfig

    argv: list[str] = []
    for file in files:
        argv += ["-c", str(file)]
    return HomeServerConfig.load_config("police-messenger deployment test", argv)


def test_synapse_loads_the_production_config(container_paths: dict[str, Path], tmp_path: Path) -> None:
    """Synapse's own loader accepts the file (and loads the module's config),
    with the secrets read from the files the entrypoint writes."""
    main = _in_container_paths(HOMESERVER, container_paths, tmp_path / "homeserver.yaml")
    config = _load_synapse_config([main])
    assert config.server.server_name == "police.example"
    assert config.registration.registration_shared_secret == "test-registration_shared_secret"
    assert config.key.macaroon_secret_key == b"test-macaroon_secret_key"
    assert config.worker.run_background_tasks
    [(module, module_config)] = config.modules.loaded_modules
    assert module.__name__ == "PolicePolicy"
    assert module_config.auditor.user_id == "@auditor:police.example"


@pytest.mark.parametrize("worker_name", ["main", *WORKER_NAMES.values()])
def test_synapse_loads_each_process_of_the_workers_profile(
    container_paths: dict[str, Path], tmp_path: Path, worker_name: str
) -> None:
    files = [
        _in_container_paths(HOMESERVER, container_paths, tmp_path / "homeserver.yaml"),
        _in_container_paths(WORKERS_DIR / "shared.yaml", container_paths, tmp_path / "shared.yaml"),
    ]
    if worker_name != "main":
        files.append(
            _in_container_paths(
                WORKERS_DIR / f"{worker_name}.yaml", container_paths, tmp_path / "worker.yaml"
            )
        )
    config = _load_synapse_config(files)
    # Synapse calls the main process "master" internally.
    assert config.worker.instance_name == ("master" if worker_name == "main" else worker_name)
    assert config.redis.redis_enabled and config.redis.redis_password == "test-redis_password"
    assert config.worker.worker_replication_secret == "test-worker_replication_secret"
    # Background jobs (Synapse's and the module's) run on one process only.
    assert config.worker.run_background_tasks == (worker_name == "background_worker")
    assert config.worker.send_federation == (worker_name == "federation_sender1")
    # The media repository stays on main; the background worker can reach the
    # media store to delete expired files.
    assert config.media.can_load_media_repo


# -- Element Web ----------------------------------------------------------------------


def test_element_web_config_closes_what_the_policy_closes() -> None:
    config = json.loads((REPO_ROOT / "config" / "element-web" / "config.json").read_text())
    homeserver = yaml.safe_load(HOMESERVER.read_text())
    server = config["default_server_config"]
    assert server["m.homeserver"]["base_url"] == homeserver["public_baseurl"].rstrip("/")
    assert server["m.homeserver"]["server_name"] == homeserver["server_name"]
    assert "m.identity_server" not in server
    assert config["disable_custom_urls"] is True
    assert config["disable_guests"] is True
    assert config["disable_3pid_login"] is True
    defaults = config["setting_defaults"]
    assert defaults["UIFeature.registration"] is False
    assert defaults["UIFeature.identityServer"] is False
    assert defaults["UIFeature.urlPreviews"] is False
    assert defaults["urlPreviewsEnabled"] is False and defaults["urlPreviewsEnabled_e2ee"] is False
    assert defaults["UIFeature.voip"] is False
    assert not config.get("integrations_ui_url") and not config.get("integrations_rest_url")
    assert not config.get("integrations_widgets_urls")
    assert config.get("jitsi") is None
    assert not config.get("bug_report_endpoint_url")
    # MSC4153: keys only to, and messages only from, devices cross-signed by their owner (the
    # bots are; tests/integration/test_bots_with_strict_clients.py)
    assert config["features"]["feature_exclude_insecure_devices"] is True
    # the force's login page: its logo, no links to element.io or social media, no welcome page
    assert config["branding"]["auth_footer_links"] == []
    assert (REPO_ROOT / "config" / "element-web" / config["branding"]["auth_header_logo_url"]).is_file()
    assert config["embedded_pages"]["login_for_welcome"] is True
    # the home page after login is the force's, without Element's "Explore Public Rooms"
    home = REPO_ROOT / "config" / "element-web" / config["embedded_pages"]["home_url"]
    shown = re.sub(r"<!--.*?-->", "", home.read_text(), flags=re.DOTALL)
    assert "#/dm" in shown and "Explore" not in shown
    # each file config.json names is mounted beside it in the element-web container
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    mounts = {volume.split(":")[1] for volume in compose["services"]["element-web"]["volumes"]}
    for name in (config["branding"]["auth_header_logo_url"], config["embedded_pages"]["home_url"]):
        assert f"/app/{name}" in mounts, name
    # no public room or space offered in Element's create dialogs (the module refuses them)
    assert defaults["UIFeature.allowCreatingPublicRooms"] is False
    assert defaults["UIFeature.allowCreatingPublicSpaces"] is False


# -- Element iOS ----------------------------------------------------------------------


def test_element_ios_managed_configuration() -> None:
    with (REPO_ROOT / "config" / "element-ios" / "AppConfig.plist").open("rb") as handle:
        managed = plistlib.load(handle)
    homeserver = yaml.safe_load(HOMESERVER.read_text())
    # The keys Element iOS reads (Config/MDMSettings.swift), and no others.
    assert set(managed) == {
        "im.vector.app.serverConfigDefaultHomeserverUrlString",
        "im.vector.app.serverConfigSygnalAPIUrlString",
        "im.vector.app.clientPermalinkBaseUrl",
    }
    assert managed["im.vector.app.serverConfigDefaultHomeserverUrlString"] == homeserver[
        "public_baseurl"
    ].rstrip("/")
    assert managed["im.vector.app.serverConfigSygnalAPIUrlString"].endswith("/_matrix/push/v1/notify")
    for value in managed.values():
        assert value.startswith("https://")
    web = json.loads((REPO_ROOT / "config" / "element-web" / "config.json").read_text())
    assert managed["im.vector.app.clientPermalinkBaseUrl"] == web["permalink_prefix"]


# -- Bots -------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["auditor-bot", "dispatch-bot"])
def test_every_secret_file_a_bot_reads_is_written_by_its_entrypoint(
    compose: dict[str, Any], service: str
) -> None:
    """A *_file setting under /etc/police-* lives on the container's tmpfs: the
    entrypoint must write it from the environment, or the bot cannot start."""
    definition = compose["services"][service]
    config_path = definition["command"][-1].replace("/config/", f"{REPO_ROOT / 'config'}/")
    config = yaml.safe_load(Path(config_path).read_text())
    wanted = {
        value
        for key, value in config.items()
        if key.endswith("_file") and str(value).startswith("/etc/police-")
    }
    pairs = definition["environment"]["POLICE_SECRET_FILES"].split()
    written = {pair.split("=", 1)[1] for pair in pairs}
    assert wanted, "the bot reads its secrets from files"
    assert wanted <= written
    for pair in pairs:
        assert pair.split("=", 1)[0] in definition["environment"], pair


def test_dispatch_bot_production_config_parses(tmp_path: Path) -> None:
    from bots.dispatch.config import parse_config

    raw = yaml.safe_load((REPO_ROOT / "config" / "production" / "dispatch.yaml").read_text())
    assert raw["password_file"] == "/etc/police-dispatch/password"  # the compose file's tmpfs
    password = tmp_path / "password"
    password.write_text("test-password")
    raw["password_file"] = str(password)
    assert raw["state_key_file"] == "/etc/police-dispatch/state.key"  # the same tmpfs
    (tmp_path / "state.key").write_text(os.urandom(32).hex())
    raw["state_key_file"] = str(tmp_path / "state.key")
    config = parse_config(raw, tmp_path)
    homeserver = yaml.safe_load(HOMESERVER.read_text())
    assert config.homeserver_url == homeserver["public_baseurl"].rstrip("/")
    assert config.user_id.endswith(":" + homeserver["server_name"])


@pytest.mark.parametrize("script", ["docker/synapse/entrypoint.sh", "docker/bots/entrypoint.sh"])
def test_entrypoints_are_valid_shell(script: str) -> None:
    path = REPO_ROOT / script
    assert os.access(path, os.X_OK), f"{script} is not executable"
    result = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_bot_entrypoint_moves_secrets_from_the_environment_to_files() -> None:
    """As a non-root user (no privilege drop), the entrypoint writes each
    listed variable to its file, mode 0600, and the command no longer sees it."""
    with tempfile.TemporaryDirectory() as directory:
        _check_bot_entrypoint(Path(directory))


def _check_bot_entrypoint(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # pytest's own temporary directories are closed to other users
        command = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "nobody", "--"]
        tmp_path.chmod(0o777)
    else:
        command = []
    secret_file = tmp_path / "secrets" / "password"
    env = {
        "PATH": "/usr/bin:/bin",
        "BOT_PASSWORD": "test-password",
        "POLICE_SECRET_FILES": f"BOT_PASSWORD={secret_file}",
    }
    # a copy: the clone may lie in a directory the other user cannot enter (mode 0700)
    script = str(shutil.copy(REPO_ROOT / "docker" / "bots" / "entrypoint.sh", tmp_path / "entrypoint.sh"))
    Path(script).chmod(0o755)
    probe = 'printf "%s" "${BOT_PASSWORD:-unset}"'
    result = subprocess.run(
        [*command, "sh", script, "sh", "-c", probe], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "unset"
    assert secret_file.read_text() == "test-password"
    assert secret_file.stat().st_mode & 0o777 == 0o600

    env["BOT_PASSWORD"] = "change-me-bot-password"
    result = subprocess.run(
        [*command, "sh", script, "true"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "BOT_PASSWORD is not set" in result.stderr
