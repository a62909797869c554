"""What produced an artifact: settings, their hash, package versions, git revision, seed."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

from sedsft.config import settings_hash

PACKAGES = ("sedsft", "torch", "transformers", "trl", "datasets", "accelerate", "deepspeed",
            "vllm", "math-verify", "sacrebleu")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """name -> installed version, None where the package is missing."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_revision() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                  text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return revision + ("-dirty" if dirty else "")


def provenance(experiment: str, settings: dict, **extra) -> dict:
    return {
        "experiment": experiment,
        "config_hash": settings_hash(settings),
        "settings": settings,
        "seed": settings.get("seed"),
        "data_seed": settings.get("data_seed"),
        "git_revision": git_revision(),
        "packages": package_versions(),
        "python": platform.python_version(),
        **extra,
    }
