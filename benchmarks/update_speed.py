"""Gradient updates per second of each algorithm on one recipe's base, measured in one process.

    python benchmarks/update_speed.py recipes/metaworld_push_lpds.yaml --updates 300

Fills one replay buffer with prior-noise rollouts, then times ``--updates`` updates of every algorithm
on it, interleaving the algorithms in rounds so that load from other jobs hits them alike. Reported as
updates/s and as a ratio to DSRL-SAC (the cheapest: it never decodes during an update); only the ratios
are meant to carry over to another machine. Also the arithmetic: GFLOP per update (torch's FlopCounterMode) times
updates/s, against this thread's fp32 matmul rate at the update's sizes, measured in the same rounds; and the share of
an update's time its own matmuls take when replayed alone (same shapes, strides and operands, in the same rounds):
what is left is the elementwise work around them.
Writes ``benchmarks/results/update_speed.json`` (or ``--output``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vla_steer.algorithms import build_algorithm
from vla_steer.algorithms.configs import config_for_method
from vla_steer.config import load_recipe
from vla_steer.training import SteeringTrainer

RESULTS = Path(__file__).parent / "results"
VARIANTS = {  # name -> algorithm overrides
    "dsrl_sac": {"name": "dsrl_sac"},
    "dsrl_na": {"name": "dsrl_na"},
    "lpds (action critic)": {"name": "lpds", "critic": "action"},
    "lpds (latent critic)": {"name": "lpds", "critic": "latent"},
}


MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.bmm.default, torch.ops.aten.addmm.default,
            torch.ops.aten.baddbmm.default}


def update_arithmetic(algo, batch) -> tuple[int, list]:
    """One update, run on a copy of the algorithm, counted and recorded: its floating-point operations (torch's
    FlopCounterMode counts matmuls, convolutions and attention, the bulk of the work) and every matmul it calls,
    with copies of their operands, to be replayed alone."""
    import copy

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    calls = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in MATMULS:  # clone() keeps the strides: a transposed operand stays transposed
                calls.append((func, [a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args], kwargs or {}))
            return func(*args, **(kwargs or {}))

    counter = FlopCounterMode(display=False)
    with counter, Recorder():
        copy.deepcopy(algo).update(batch)
    return counter.get_total_flops(), calls


def matmul_flops_and_seconds(batch: int, width: int, seconds: float = 1.0) -> tuple[float, float]:
    """fp32 matmuls at the update's sizes ([batch, width] x [width, width]) for about ``seconds``: (FLOP, seconds).
    Their rate is the ceiling the update's arithmetic can reach on this thread."""
    a, b = torch.randn(batch, width), torch.randn(width, width)
    for _ in range(10):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(50):
            a @ b
        count += 50
    return 2 * batch * width * width * count, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--updates", type=int, default=300, help="timed updates per algorithm")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds the updates are split into")
    parser.add_argument("--fill-env-steps", type=int, default=2000, help="prior-noise env steps in the buffer")
    parser.add_argument("--output", type=Path, default=RESULTS / "update_speed.json")
    parser.add_argument("--compile", action="store_true",
                        help="also time DSRL-SAC with its networks under torch.compile (inductor fuses the elementwise "
                             "work around the matmuls; the arithmetic is the eager one's)")
    args = parser.parse_args()

    recipe = load_recipe(args.recipe, args.overrides + ["train.show_progress=false", "train.resume=false",
                                                        "train.output_dir=runs/bench/update_speed"])
    trainer = SteeringTrainer(recipe)
    trainer.collector.reset(iteration=0)
    while trainer.env_steps < args.fill_env_steps:
        trainer.collect(warm=True)
    trainer.collector.close()

    algorithms = {}
    for name, fields in VARIANTS.items():
        cfg = config_for_method(recipe.algorithm, **fields)
        algorithms[name] = build_algorithm(cfg, recipe.head, trainer.adapter, trainer.layout, trainer.accelerator)
    generator = torch.Generator().manual_seed(0)
    flops, matmuls = {}, {}
    for name, algo in algorithms.items():
        flops[name], matmuls[name] = update_arithmetic(algo, trainer.buffer.sample(recipe.algorithm.batch_size, generator))
    if args.compile:
        compiled = build_algorithm(config_for_method(recipe.algorithm, name="dsrl_sac"), recipe.head, trainer.adapter,
                                   trainer.layout, trainer.accelerator)
        for module in ("actor", "critic", "critic_target"):
            setattr(compiled, module, torch.compile(getattr(compiled, module)))
        compiled.update(trainer.buffer.sample(recipe.algorithm.batch_size, generator))  # compiles (not timed)
        name = "dsrl_sac (compiled networks)"
        algorithms[name], matmuls[name], flops[name] = compiled, matmuls["dsrl_sac"], flops["dsrl_sac"]
    seconds = {name: 0.0 for name in algorithms}
    matmul_seconds_of = {name: 0.0 for name in algorithms}
    matmul_flops, matmul_seconds = 0.0, 0.0
    per_round = max(1, args.updates // args.rounds)
    for _ in range(args.rounds):
        # the ceiling is measured in every round beside the updates, so that load from other jobs hits both alike
        flops_, seconds_ = matmul_flops_and_seconds(recipe.algorithm.batch_size, recipe.head.hidden_dim)
        matmul_flops, matmul_seconds = matmul_flops + flops_, matmul_seconds + seconds_
        for name, algo in algorithms.items():
            algo.update(trainer.buffer.sample(recipe.algorithm.batch_size, generator))  # warm caches / allocator
            start = time.perf_counter()
            for _ in range(per_round):
                algo.update(trainer.buffer.sample(recipe.algorithm.batch_size, generator))
            seconds[name] += time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(per_round):
                for func, operands, kwargs in matmuls[name]:
                    func(*operands, **kwargs)
            matmul_seconds_of[name] += time.perf_counter() - start

    timed = per_round * args.rounds
    rates = {name: timed / s for name, s in seconds.items()}
    peak = matmul_flops / matmul_seconds / 1e9
    result = {
        "recipe": args.recipe, "overrides": args.overrides, "batch_size": recipe.algorithm.batch_size,
        "base": {"type": recipe.base.type, "hidden_dim": recipe.base.hidden_dim, "num_inference_steps": recipe.base.num_inference_steps},
        "torch_threads": torch.get_num_threads(), "updates_timed": timed,
        "updates_per_s": rates, "ratio_to_dsrl_sac": {name: rate / rates["dsrl_sac"] for name, rate in rates.items()},
        "gflop_per_update": {name: f / 1e9 for name, f in flops.items()},
        "achieved_gflop_per_s": {name: flops[name] * rates[name] / 1e9 for name in rates},
        "matmul_peak_gflop_per_s": peak,
        "fraction_of_peak": {name: flops[name] * rates[name] / 1e9 / peak for name in rates},
        "matmuls_per_update": {name: len(calls) for name, calls in matmuls.items()},
        "matmul_share_of_update": {name: matmul_seconds_of[name] / seconds[name] for name in rates},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    width = max(map(len, rates))
    for name, rate in rates.items():
        achieved = result["achieved_gflop_per_s"][name]
        print(f"{name:<{width}}  {rate:7.1f} updates/s   x{rate / rates['dsrl_sac']:.2f} of dsrl_sac   "
              f"{flops[name] / 1e9:.2f} GFLOP/update = {achieved:.1f} GFLOP/s ({achieved / peak:.0%} of the "
              f"{peak:.1f} GFLOP/s matmul peak); its {len(matmuls[name])} matmuls alone take "
              f"{result['matmul_share_of_update'][name]:.0%} of its time")
    print(f"{timed} timed updates each -> {args.output}")


if __name__ == "__main__":
    main()
