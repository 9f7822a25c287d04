"""What a result needs to be trusted or rerun: the code's commit, package versions, the machine. (Standard library
and torch only; every package may use it.)"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

RUN_PACKAGES = ("vla_steer", "torch", "lerobot", "transformers", "accelerate", "mujoco", "metaworld", "gymnasium",
                "gymnasium-robotics", "gym-pusht", "stable-baselines3")


def package_versions(packages=RUN_PACKAGES) -> dict[str, str]:
    """``{package: version}`` for the installed ones among ``packages``."""
    out = {}
    for package in packages:
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    """The commit of the vla_steer checkout this runs from, with ``+dirty`` when it has uncommitted changes; in a copied
    tree (a remote GPU machine, whose git metadata may be missing or stale), ``VLA_STEER_GIT_COMMIT`` when set."""
    root = Path(__file__).resolve().parents[1]
    if os.environ.get("VLA_STEER_GIT_COMMIT"):
        return os.environ["VLA_STEER_GIT_COMMIT"]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def hardware() -> dict:
    """The CPU model and count, the GPU if any, the platform and torch's thread count."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"platform": platform.platform(), "python": platform.python_version(), "processor": cpu,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
