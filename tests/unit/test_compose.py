"""The deployment files keep their promises: docker-compose.yml, the Dockerfile, .env.example.

These read the files only. `.ci/deploy-checks` runs the real Compose binary (`config -q`) and
hadolint on them; tests/acceptance/test_entrypoints.py runs their commands.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load(TEXT)
SERVICES: dict[str, Any] = COMPOSE["services"]
SERVERS = {"postgres", "redis"}
APP = set(SERVICES) - SERVERS
LONG_RUNNING_APP = APP - {"migrate"}
SECRET = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH|_KEY\b|CREDENTIAL", re.IGNORECASE)
INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def default_of(value: str) -> str:
    """The value with every ``${X:-d}`` replaced by ``d`` (compose with the variable unset)."""
    return INTERPOLATION.sub(lambda m: m.group(3) if m.group(2) in (":-", "-") else m.group(0), value)


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", str(duration))
    assert match, f"write durations in seconds: {duration}"
    return float(match.group(1))


def top_level_nodes() -> dict[str, yaml.Node]:
    """The file as YAML nodes: an alias (``*app``) is the very node its anchor (``&app``) marks."""
    root = yaml.compose(TEXT)
    assert isinstance(root, yaml.MappingNode)
    return {key.value: value for key, value in root.value}


NODES = top_level_nodes()


def child(node: yaml.Node, name: str) -> yaml.Node:
    assert isinstance(node, yaml.MappingNode)
    pairs: list[tuple[yaml.Node, yaml.Node]] = node.value
    return next(value for key, value in pairs if key.value == name)


def service_node(name: str) -> yaml.MappingNode:
    node = child(NODES["services"], name)
    assert isinstance(node, yaml.MappingNode)
    return node


def merged(node: yaml.Node) -> list[yaml.Node]:
    """The nodes a mapping merges in with ``<<:``."""
    assert isinstance(node, yaml.MappingNode)
    return [value for key, value in node.value if key.value == "<<"]


def test_every_app_service_merges_the_one_app_anchor() -> None:
    for name in APP:
        merges = merged(service_node(name))
        assert len(merges) == 1, f"{name} does not merge one anchor"
        assert merges[0] is NODES["x-app"], f"{name} merges something other than x-app"


def test_every_app_service_runs_the_same_image_and_environment() -> None:
    anchor = COMPOSE["x-app"]
    for name in APP:
        service = SERVICES[name]
        assert service["image"] == anchor["image"], name
        assert service["build"] == anchor["build"], name
        environment = service["environment"]
        for key, value in anchor["environment"].items():
            assert environment.get(key) == value, f"{name}: {key} differs from the x-app environment"
    # A service that adds keys merges the anchor's environment (a merge, not a copy).
    own = [name for name in APP if "environment" in {key.value for key, _ in service_node(name).value}]
    assert own, "no service adds to the environment (flower must)"
    for name in own:
        merges = merged(child(service_node(name), "environment"))
        assert len(merges) == 1, f"{name}'s environment does not merge the x-app environment"
        assert merges[0] is child(NODES["x-app"], "environment"), name


def test_app_services_have_no_service_specific_image_or_build() -> None:
    for name in APP:
        own_keys = {key.value for key, _ in service_node(name).value}
        assert not own_keys & {"image", "build", "entrypoint"}, f"{name} overrides the image or entrypoint"


def test_long_running_services_have_a_healthcheck_or_a_documented_reason() -> None:
    for name, service in SERVICES.items():
        if service.get("restart") == "no":
            continue  # one-shot (migrate): compose waits for it to exit 0
        check = service.get("healthcheck", {})
        reason = service.get("x-healthcheck-reason", "")
        has_check = bool(check.get("test")) and not check.get("disable", False)
        assert has_check or len(reason) > 20, f"{name} has neither a healthcheck nor x-healthcheck-reason"


def test_app_healthchecks_are_the_jobs_health_command_for_their_role() -> None:
    for name in LONG_RUNNING_APP:
        test = SERVICES[name]["healthcheck"]["test"]
        role = SERVICES[name]["command"][0]
        assert test[:3] == ["CMD", "jobs", "health"], f"{name}: {test}"
        assert test[3] == role, f"{name} runs {role} but checks {test[3]}"
    io = SERVICES["worker-io"]
    node = io["command"][io["command"].index("-n") + 1]
    assert io["healthcheck"]["test"][-2:] == ["--node", node], "the io worker's check must ping its own node"
    assert SERVICES["migrate"]["healthcheck"] == {"disable": True}


def test_app_services_start_after_migrate_completes_and_servers_are_healthy() -> None:
    for name in LONG_RUNNING_APP:
        depends = SERVICES[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert SERVICES["migrate"]["command"] == ["db", "upgrade"]
    assert SERVICES["migrate"]["restart"] == "no"


def test_flower_is_published_on_loopback_only_with_auth() -> None:
    flower = SERVICES["flower"]
    env = flower["environment"]
    assert flower["ports"], "flower publishes no port"
    for port in flower["ports"]:
        host, _, rest = str(port).partition(":")
        assert host == "127.0.0.1", f"flower published beyond loopback: {port}"
        assert rest.rsplit(":", 1)[1] == env["JOBS_FLOWER_PORT"]
    assert env["JOBS_FLOWER_ADDRESS"] == "0.0.0.0"  # inside its container; the host sees 127.0.0.1
    for key in ("JOBS_FLOWER_USER", "JOBS_FLOWER_PASSWORD"):
        assert re.fullmatch(r"\$\{" + key + r":\?[^}]+\}", env[key]), (
            f"{key} must be required, not {env[key]}"
        )
    assert not any("no-auth" in arg for arg in flower["command"])


def test_only_flower_publishes_a_port() -> None:
    published = {name for name, service in SERVICES.items() if service.get("ports")}
    assert published == {"flower"}


def all_strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [text for key, item in value.items() for text in [str(key), *all_strings(item)]]
    if isinstance(value, list):
        return [text for item in value for text in all_strings(item)]
    return [str(value)]


def test_no_secret_has_a_value_in_the_compose_file() -> None:
    for text in all_strings(COMPOSE):
        for name, operator, rest in INTERPOLATION.findall(text):
            if SECRET.search(name):
                assert operator == ":?", f"${{{name}}} must be required (:?), not defaulted: {text}"
                assert rest, f"${{{name}:?}} should say where to set it"
        for password in re.findall(r"://[^:/@\s]*:([^@\s]+)@", text):
            assert INTERPOLATION.fullmatch(password), f"a URL carries a literal password: {text}"
    for service in SERVICES.values():
        for key, value in (service.get("environment") or {}).items():
            if SECRET.search(key):
                assert INTERPOLATION.fullmatch(str(value)), f"{key} has a literal value"
    requirepass = SERVICES["redis"]["command"]
    assert INTERPOLATION.fullmatch(requirepass[requirepass.index("--requirepass") + 1])


def test_env_example_leaves_every_secret_empty_and_env_stays_out_of_git_and_images() -> None:
    lines = [line for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line]
    values = dict(line.split("=", 1) for line in lines if not line.startswith("#"))
    secrets = {key for key in values if SECRET.search(key)}
    assert secrets >= {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "JOBS_FLOWER_PASSWORD"}
    for key in secrets:
        assert values[key] == "", f".env.example gives {key} a value"
    required = {
        name for text in all_strings(COMPOSE) for name, op, _ in INTERPOLATION.findall(text) if op == ":?"
    }
    assert required <= set(values), f".env.example lacks {required - set(values)}"
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
    dockerignore = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [line for line in dockerignore if line and not line.startswith("#")]
    assert rules[0] == "*", ".dockerignore must start from nothing (an allow-list)"
    assert not any(line.startswith("!") and ".env" in line for line in dockerignore)


def test_compose_defaults_are_the_settings_defaults() -> None:
    fields = Settings.model_fields
    for key, value in COMPOSE["x-app"]["environment"].items():
        name = key.removeprefix("JOBS_").lower()
        if name in ("database_url", "broker_url"):
            continue
        default = fields[name].get_default(call_default_factory=True)
        expected = ",".join(default) if isinstance(default, list) else str(default)
        shown = default_of(value)
        assert shown == expected or float(shown) == default, f"{key}: compose {shown}, settings {expected}"


def test_servers_are_postgres_16_and_redis_7_with_persistence() -> None:
    postgres, redis = SERVICES["postgres"], SERVICES["redis"]
    assert re.fullmatch(r"postgres:16(\.\d+)*(-[\w.]+)?", postgres["image"])
    assert re.fullmatch(r"redis:7(\.\d+)*(-[\w.]+)?", redis["image"])
    named_volumes = set(COMPOSE["volumes"])
    assert postgres["volumes"][0].split(":")[0] in named_volumes
    assert redis["volumes"][0].split(":")[0] in named_volumes
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert "--requirepass" in command


def test_stop_grace_periods_cover_the_soft_shutdown() -> None:
    soft = float(default_of(COMPOSE["x-app"]["environment"]["JOBS_WORKER_SOFT_SHUTDOWN_TIMEOUT"]))
    for name in ("worker", "worker-io"):
        grace = seconds(SERVICES[name]["stop_grace_period"])
        assert grace >= soft + 10, f"{name}: {grace:g}s grace leaves no room after a {soft:g}s soft shutdown"
    assert re.search(r"45 s = 30 s soft\s*#?\s*shutdown", TEXT), "explain the grace period's numbers"


def test_workers_run_the_pools_the_issue_asks_for() -> None:
    worker, io = SERVICES["worker"]["command"], SERVICES["worker-io"]["command"]
    assert worker[0] == "worker"
    assert "-P" not in worker or worker[worker.index("-P") + 1] == "prefork"
    assert "-Q" not in worker, "the default worker serves every kind's queue"
    assert "-n" not in worker, "--scale worker=N needs the per-container default node name"
    assert io[io.index("-P") + 1] == "threads"
    assert default_of(io[io.index("-Q") + 1]) not in ("", "default")
    assert SERVICES["beat"]["command"] == ["beat"]
    assert SERVICES["flower"]["command"] == ["flower"]


def test_compose_commands_are_the_makefile_commands() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = {"worker": "worker", "beat": "beat", "flower": "flower", "migrate": "migrate"}
    for service, target in targets.items():
        recipe = re.search(rf"^{target}:.*\n\t(.+)$", makefile, flags=re.MULTILINE)
        assert recipe, f"Makefile has no {target} target"
        first = SERVICES[service]["command"][:2] if service == "migrate" else SERVICES[service]["command"][:1]
        assert f"jobs {' '.join(first)}" in recipe.group(1), f"make {target} and compose {service} differ"
    for target in ("up", "down", "logs"):
        recipe = re.search(rf"^{target}:.*\n\t(.+)$", makefile, flags=re.MULTILINE)
        assert recipe, f"Makefile has no {target} target"
        assert "$(COMPOSE)" in recipe.group(1) or "docker compose" in recipe.group(1)


def test_deploy_docs_show_each_service_command() -> None:
    docs = (ROOT / "docs" / "deploy.md").read_text()
    for name in APP:
        shown = "jobs " + " ".join(default_of(arg) for arg in SERVICES[name]["command"])
        assert shown in docs, f"docs/deploy.md does not show {name}'s command: {shown}"
    assert "validated but not run" in docs


def dockerfile_stages() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text()
    parts = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    return {part.split("\n", 1)[0].rsplit(" AS ", 1)[-1]: part for part in parts}


def test_dockerfile_builds_with_locked_uv_and_runs_slim_as_a_numeric_user() -> None:
    stages = dockerfile_stages()
    build, runtime = stages["build"], stages["runtime"]
    assert "uv sync --locked" in build
    assert "--mount=type=cache,target=/root/.cache/uv" in build
    assert "UV_COMPILE_BYTECODE=1" in build
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.1[2-9][\w.-]*-slim", text, flags=re.MULTILINE)
    assert runtime.startswith("${PYTHON_IMAGE} AS runtime")
    user = re.findall(r"^USER (\S+)$", runtime, flags=re.MULTILINE)
    assert user, "the runtime stage sets no USER"
    uid = user[-1].split(":")[0]
    assert uid.isdigit(), "USER must be numeric (Kubernetes runAsNonRoot checks it)"
    assert int(uid) != 0
    assert "uv" not in re.findall(r"COPY --from=(\S+)", runtime), "uv must not reach the runtime image"
    assert "--mount=type=cache" not in runtime
    assert re.search(r'^ENTRYPOINT \["jobs"\]$', runtime, flags=re.MULTILINE), "exec-form jobs entrypoint"
    assert re.search(r'^\s+CMD \["jobs", "health", "worker"\]$', runtime, flags=re.MULTILINE)
    assert re.search(r"^ENV PATH=/app/\.venv/bin:\$PATH$", runtime, flags=re.MULTILINE)
    assert re.search(r"^ENV REMAP_SIGTERM=SIGQUIT$", runtime, flags=re.MULTILINE)
