"""File helpers every package may use (this module imports nothing from ``vla_steer``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable


def write_atomically(final_dir: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_dir)`` on a fresh temporary directory next to ``final_dir``, then rename it into place: a
    crash leaves the previous directory (or none), never half of one. Returns ``final_dir``."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = final_dir.with_name(final_dir.name + ".tmp")
    old = final_dir.with_name(final_dir.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final_dir, old)
    os.replace(tmp, final_dir)
    shutil.rmtree(old, ignore_errors=True)
    return final_dir
