"""The steering algorithms (DSRL-SAC, DSRL-NA, LP-DS) and their configs.

The configs (:mod:`vla_steer.algorithms.configs`) import no torch, so recipes parse fast; the algorithm classes
are imported on first use (``from vla_steer.algorithms import LPDS, build_algorithm``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vla_steer.algorithms.configs import (ALGORITHM_CONFIGS, AlgorithmConfig, DSRLNAConfig, DSRLSACConfig, LPDSConfig,
                                          algorithm_config)

if TYPE_CHECKING:
    from vla_steer.algorithms.base import SteeringAlgorithm


def algorithm_classes() -> dict[str, type[SteeringAlgorithm]]:
    """``{name: class}`` of every algorithm (imports them)."""
    from vla_steer.algorithms.dsrl_na import DSRLNA
    from vla_steer.algorithms.dsrl_sac import DSRLSAC
    from vla_steer.algorithms.lpds import LPDS

    return {cls.name: cls for cls in (DSRLSAC, DSRLNA, LPDS)}


def build_algorithm(cfg: AlgorithmConfig, head, adapter, layout, accelerator) -> SteeringAlgorithm:
    """The algorithm ``cfg`` configures (``cfg``: the recipe's ``algorithm`` section, one of the registered config
    classes), on ``accelerator``'s device."""
    classes = algorithm_classes()
    if cfg.name not in classes:
        raise ValueError(f"unknown algorithm {cfg.name!r}; available: {sorted(classes)}")
    return classes[cfg.name](cfg, head, adapter, layout, accelerator).to(accelerator.device)


def __getattr__(name: str):
    if name == "SteeringAlgorithm":
        from vla_steer.algorithms.base import SteeringAlgorithm

        return SteeringAlgorithm
    if name == "ALGORITHMS":
        return algorithm_classes()
    classes = {cls.__name__: cls for cls in algorithm_classes().values()}
    if name in classes:
        return classes[name]
    raise AttributeError(f"module 'vla_steer.algorithms' has no attribute {name!r}")


__all__ = ["ALGORITHMS", "ALGORITHM_CONFIGS", "AlgorithmConfig", "DSRLNA", "DSRLNAConfig", "DSRLSAC", "DSRLSACConfig",
           "LPDS", "LPDSConfig", "SteeringAlgorithm", "algorithm_classes", "algorithm_config", "build_algorithm"]
