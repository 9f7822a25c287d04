from vla_steer.algorithms.base import SteeringAlgorithm
from vla_steer.algorithms.dsrl_na import DSRLNA
from vla_steer.algorithms.dsrl_sac import DSRLSAC
from vla_steer.algorithms.lpds import LPDS

ALGORITHMS: dict[str, type[SteeringAlgorithm]] = {cls.name: cls for cls in (DSRLSAC, DSRLNA, LPDS)}


def build_algorithm(cfg, head, adapter, layout, accelerator) -> SteeringAlgorithm:
    if cfg.name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {cfg.name!r}; available: {sorted(ALGORITHMS)}")
    return ALGORITHMS[cfg.name](cfg, head, adapter, layout, accelerator).to(accelerator.device)


__all__ = ["ALGORITHMS", "DSRLNA", "DSRLSAC", "LPDS", "SteeringAlgorithm", "build_algorithm"]
