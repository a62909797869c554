"""envs/*.yaml (conda environments for clusters) must agree with pyproject.toml, the one place
where versions are pinned. No conda here: the files are checked as data."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
ENVS = {"cpu": REPO / "envs" / "cpu.yaml", "gpu": REPO / "envs" / "gpu.yaml"}
TORCH_PIN = Version("2.13.0")


def pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


def requirements(lines: list[str]) -> dict[str, Requirement]:
    out: dict[str, Requirement] = {}
    for line in lines:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name not in out, f"{req.name} listed twice"
        out[name] = req
    return out


def project_requirements(env: str) -> dict[str, Requirement]:
    project = pyproject()["project"]
    lines = list(project["dependencies"])
    if env == "gpu":
        lines += project["optional-dependencies"]["gpu"]
    return requirements(lines)


def env_file(env: str) -> dict:
    with open(ENVS[env]) as fh:
        return yaml.safe_load(fh)


def env_pip_lines(env: str) -> list[str]:
    """The pip requirements of an env file (pip options such as --extra-index-url dropped)."""
    pip_sections = [d["pip"] for d in env_file(env)["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, f"{ENVS[env].name}: expected one pip: section"
    return [line for line in pip_sections[0] if not line.startswith("-")]


def env_requirements(env: str) -> dict[str, Requirement]:
    return requirements(env_pip_lines(env))


def exact_pin(req: Requirement) -> Version:
    (spec,) = req.specifier
    assert spec.operator == "==", f"{req} is not an exact pin"
    return Version(spec.version)


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize("env", sorted(ENVS))
def test_env_file_parses_and_names_its_environment(env):
    data = env_file(env)
    assert data["name"] == f"sedsft-{env}"
    conda = [d for d in data["dependencies"] if isinstance(d, str)]
    assert "pip" in conda
    (python,) = [d for d in conda if d.startswith("python")]
    # conda's python=3.11 must satisfy the project's requires-python
    version = python.split("=", 1)[1]
    assert Version(version) in SpecifierSet(pyproject()["project"]["requires-python"])


@pytest.mark.parametrize("env", sorted(ENVS))
def test_every_env_requirement_is_an_exact_pin(env):
    for req in env_requirements(env).values():
        exact_pin(req)


# ------------------------------------------------------------------ agreement with pyproject


@pytest.mark.parametrize("env", sorted(ENVS))
def test_env_pins_equal_the_pyproject_pins(env):
    project = project_requirements(env)
    for name, req in env_requirements(env).items():
        assert name in project, f"{ENVS[env].name}: {req} is not a pyproject dependency"
        want = project[name]
        assert req.extras == want.extras, f"{ENVS[env].name}: {req} vs pyproject {want}"
        if name == "torch":
            continue  # a range in pyproject, checked below
        assert req.specifier == want.specifier, f"{ENVS[env].name}: {req} vs pyproject {want}"


@pytest.mark.parametrize("env", sorted(ENVS))
def test_every_pyproject_dependency_is_in_the_env(env):
    missing = set(project_requirements(env)) - set(env_requirements(env))
    assert not missing, f"{ENVS[env].name} lacks {sorted(missing)}"


def test_the_gpu_extra_stays_out_of_the_cpu_env():
    gpu_only = set(requirements(pyproject()["project"]["optional-dependencies"]["gpu"]))
    assert gpu_only  # vllm
    assert not gpu_only & set(env_requirements("cpu"))
    assert gpu_only <= set(env_requirements("gpu"))


def test_torch_is_a_range_in_pyproject_and_the_env_pin_satisfies_it():
    torch_range = project_requirements("cpu")["torch"].specifier
    assert all(spec.operator != "==" for spec in torch_range), "pyproject should give torch a range"
    # the lent GPU image's 2.11 and the CPU wheel both fit; 2.14 (vllm 0.33's) does not
    assert Version("2.11.0") in torch_range
    assert Version("2.14.0") not in torch_range
    for env in ENVS:
        pin = exact_pin(env_requirements(env)["torch"])
        assert pin == TORCH_PIN, f"{ENVS[env].name} pins torch {pin}"
        assert pin in torch_range, f"{ENVS[env].name}: torch {pin} outside pyproject's {torch_range}"


def test_the_cpu_env_takes_torch_from_the_cpu_index():
    pip = [d["pip"] for d in env_file("cpu")["dependencies"] if isinstance(d, dict)][0]
    assert any(line.startswith("--extra-index-url") and "whl/cpu" in line for line in pip)
