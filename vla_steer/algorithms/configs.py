"""Each steering algorithm's settings: the recipe's ``algorithm`` section, one dataclass per method.

:class:`AlgorithmConfig` holds what every method uses; :class:`DSRLSACConfig`, :class:`DSRLNAConfig` and
:class:`LPDSConfig` add only their own fields, and :data:`ALGORITHM_CONFIGS` maps ``algorithm.name`` to its class
(the recipe parser picks the class from the name, so a field of another method is an error naming the fields
this one has). This module imports nothing but the standard library: recipes parse without torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Union

from vla_steer.fields import bounded, range_problems

DEFAULT_ALGORITHM = "lpds"


@dataclass
class AlgorithmConfig:
    """What every method uses. Not an algorithm itself: recipes get one of the registered subclasses, each of
    which gives ``name`` its own value."""

    name: str
    gamma: float = bounded(0.99, gt=0, le=1)  # discount per chunk transition ("chunk") or per env step ("env_step")
    discount_mode: Literal["chunk", "env_step"] = "chunk"
    batch_size: int = bounded(256, ge=1, le=1_000_000)
    utd: int = bounded(1, ge=1, le=1000)  # gradient updates per chunk transition collected (per env)
    actor_lr: float = bounded(3e-4, gt=0, le=1)
    critic_lr: float = bounded(3e-4, gt=0, le=1)
    tau: float = bounded(0.005, gt=0, le=1)  # target-network update rate
    backup: Literal["min", "mean"] = "min"  # how critic heads combine in the TD target
    actor_reduction: Literal["min", "mean"] = "mean"

    def problems(self) -> list[str]:
        """What is wrong with these values (empty when nothing is): every field against its declared range."""
        return range_problems(self, "algorithm")


@dataclass
class SACTemperatureConfig(AlgorithmConfig):
    """SAC's entropy temperature (log-parameterised, tuned toward a target entropy): the DSRL methods' actor."""

    target_entropy: Union[float, Literal["auto"]] = 0.0  # DSRL's released configs use 0; "auto" = -latent_dim/2
    init_temperature: float = bounded(1.0, gt=0)
    temperature_lr: float = bounded(3e-4, gt=0, le=1)
    backup_entropy: bool = True  # the entropy bonus in the critic's TD target


@dataclass
class DSRLSACConfig(SACTemperatureConfig):
    """DSRL-SAC: SAC in the noise space, the critic Q^W(s, z) trained by TD on the latents the head chose."""

    name: Literal["dsrl_sac"] = "dsrl_sac"


@dataclass
class DSRLNAConfig(SACTemperatureConfig):
    """DSRL-NA: Q^A(s, a) by TD on executed actions, Q^W(s, z) distilled from it on prior noise."""

    name: Literal["dsrl_na"] = "dsrl_na"
    distill_steps: int = bounded(1, ge=1, le=100)  # Q^W distillation steps per update


@dataclass
class LPDSConfig(AlgorithmConfig):
    """LP-DS: ``z = clip(eps + Delta(s))`` under the trust region ``E ||Delta(s)||^2 <= delta``, enforced by a
    Lagrange multiplier updated by projected dual ascent."""

    name: Literal["lpds"] = "lpds"
    delta: float = bounded(0.35, gt=0)  # trust region: E ||Delta(s)||^2 <= delta
    dual_lr: float = bounded(0.05, ge=0)  # step size of projected dual ascent; 0 with init_multiplier 0: unconstrained
    init_multiplier: float = bounded(0.0, ge=0)  # the multiplier is projected onto [0, inf)
    normalize_q: bool = True  # divide the actor's Q term by mean |Q| (scale-free multiplier)
    critic: Literal["action", "latent"] = "action"  # dual Q (Q^A + distilled Q^W) or latent TD Q^W
    distill_steps: int = bounded(1, ge=1, le=100)  # Q^W distillation steps per update (critic: action)


ALGORITHM_CONFIGS: dict[str, type[AlgorithmConfig]] = {}


def register_algorithm_config(cls: type[AlgorithmConfig]) -> type[AlgorithmConfig]:
    """Register ``cls`` under its ``name`` default (the value ``algorithm.name`` takes in a recipe)."""
    name = cls.__dataclass_fields__["name"].default
    if name in ALGORITHM_CONFIGS and ALGORITHM_CONFIGS[name] is not cls:
        raise ValueError(f"algorithm {name!r} is already registered to {ALGORITHM_CONFIGS[name].__name__}")
    ALGORITHM_CONFIGS[name] = cls
    return cls


for _cls in (LPDSConfig, DSRLSACConfig, DSRLNAConfig):  # the recipe error lists names in this order
    register_algorithm_config(_cls)


def algorithm_config(name: str = DEFAULT_ALGORITHM, **fields) -> AlgorithmConfig:
    """The config of algorithm ``name`` (``algorithm_config("lpds", critic="latent")``); a field that method does
    not have is a ``TypeError`` naming the fields it has."""
    if name not in ALGORITHM_CONFIGS:
        raise ValueError(f"unknown algorithm {name!r}; available: {list(ALGORITHM_CONFIGS)}")
    cls = ALGORITHM_CONFIGS[name]
    unknown = sorted(set(fields) - set(field_names(cls)))
    if unknown:
        raise TypeError(f"{cls.__name__} ({name}) has no field(s) {unknown}; its fields: {', '.join(field_names(cls))}")
    return cls(**fields)


def config_for_method(cfg: AlgorithmConfig, name: str, **fields) -> AlgorithmConfig:
    """``cfg``'s values for method ``name`` (e.g. to compare methods on one recipe): all of them when ``name`` is
    ``cfg``'s own method, else only the fields every method shares; ``fields`` override."""
    own = dataclasses.asdict(cfg)
    shared = own if name == cfg.name else {k: own[k] for k in field_names(AlgorithmConfig)}
    return algorithm_config(**{**shared, **fields, "name": name})


def field_names(cls: type[AlgorithmConfig]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def owners_of(field: str) -> list[str]:
    """The registered algorithms that have a field called ``field``."""
    return [name for name, cls in ALGORITHM_CONFIGS.items() if field in field_names(cls)]


# The ``algorithm`` section of a ``recipe.json`` / ``results.json`` written before per-algorithm configs: every
# method's fields (``dataclasses.asdict`` of the one flat config). Read back, the other methods' fields are dropped.
LEGACY_FLAT_FIELDS = frozenset({
    "name", "gamma", "discount_mode", "batch_size", "utd", "actor_lr", "critic_lr", "tau", "backup", "actor_reduction",
    "target_entropy", "init_temperature", "temperature_lr", "backup_entropy", "distill_steps", "delta", "dual_lr",
    "init_multiplier", "normalize_q", "critic"})

__all__ = ["ALGORITHM_CONFIGS", "AlgorithmConfig", "DEFAULT_ALGORITHM", "DSRLNAConfig", "DSRLSACConfig",
           "LEGACY_FLAT_FIELDS", "LPDSConfig", "SACTemperatureConfig", "algorithm_config", "field_names", "owners_of",
           "register_algorithm_config"]
