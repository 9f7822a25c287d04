"""File helpers every package may use (this module imports nothing from ``vla_steer``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable


def write_atomically(final_dir: str | Path, write: Callable[[Path], Any], *, fixed_scratch_names: bool = False) -> Path:
    """Call ``write(tmp_dir)`` on a fresh temporary directory next to ``final_dir``, then rename it into place: a
    crash leaves the previous directory or the new one, never half of one. Returns ``final_dir``.

    The scratch directories are hidden, uniquely named ones (``.<name>.<random>.tmp`` / ``.old``), so nothing of the
    user's next to ``final_dir`` is touched. A crash in the instant between the two renames leaves no ``final_dir``:
    the previous version is then the hidden ``.<name>.<random>.old`` beside it. ``fixed_scratch_names=True`` uses
    ``<name>.tmp`` / ``<name>.old`` instead, replacing any there: for directories whose owner looks them up after a
    crash (the trainer's ``checkpoints/last``)."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    if fixed_scratch_names:
        tmp, old = (final_dir.with_name(final_dir.name + suffix) for suffix in (".tmp", ".old"))
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    else:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".tmp", dir=final_dir.parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the result should read like any directory made here
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final_dir.exists():
        if fixed_scratch_names:
            shutil.rmtree(old, ignore_errors=True)
        else:
            old = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".old", dir=final_dir.parent))
        os.replace(final_dir, old)  # onto an empty directory: allowed
        os.replace(tmp, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final_dir)
    return final_dir
