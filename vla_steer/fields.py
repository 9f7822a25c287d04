"""Numeric ranges declared once, next to each config field, and checked wherever a config is built.

``bounded(default, ge=1)`` is a dataclass field whose allowed range lives in its metadata; :func:`range_problems`
reads it back for any dataclass instance. The recipe loader, and every loader that builds a config from a file,
call it, so a value is judged by the same rule wherever it comes from. (Standard library only.)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def describe(self) -> str:
        bounds = (("> =", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
        return " and ".join(f"{op.replace(' ', '')} {_number(x)}" for op, x in bounds if x is not None)

    def contains(self, value: float) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None) -> Any:
    """A dataclass field with ``default`` whose numeric value must lie in the given range (``None`` always passes)."""
    return dataclasses.field(default=default, metadata={"range": Range(ge, gt, le, lt)})


def range_problems(config: Any, prefix: str) -> list[str]:
    """``prefix.field=value must be ...`` for every numeric field of ``config`` outside its declared range, and for
    every non-finite float (NaN and inf are never a setting)."""
    problems = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        where = f"{prefix}.{f.name}={value!r}"
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{where} must be a finite number")
            continue
        allowed: Range | None = f.metadata.get("range")
        if allowed is not None and not allowed.contains(value):
            problems.append(f"{where} must be {allowed.describe()}")
    return problems
