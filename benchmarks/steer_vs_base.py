"""Steered vs. base over several seeds: one results JSON + learning curve per run in benchmarks/results/.

    python benchmarks/steer_vs_base.py recipes/metaworld_push_lpds.yaml --seeds 0 1 2
    python benchmarks/summarize.py            # table over every results JSON
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from vla_steer.config import load_recipe
from vla_steer.training import SteeringTrainer

RESULTS = Path(__file__).parent / "results"


def run_name(recipe) -> str:
    """``<env>[_<base>]``: built-in DDIM bases keep their historic names; LeRobot checkpoints say ``lerobot_<type>``."""
    if recipe.env.type is not None:
        env = f"{recipe.env.type}_{recipe.env.options.get('task', '')}"
    else:
        env = recipe.env.id.replace("/", "_")
    if recipe.base.path:
        from vla_steer.pipeline import base_directory, is_builtin_base

        directory = base_directory(recipe)
        kind = "" if is_builtin_base(directory) else "_lerobot_" + json.loads((directory / "config.json").read_text())["type"]
        return env + kind
    return env + ("" if recipe.base.type == "diffusion" else f"_{recipe.base.type}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        recipe = load_recipe(args.recipe, args.overrides + [f"train.seed={seed}", "train.resume=false",
                                                            f"train.output_dir=runs/bench/{Path(args.recipe).stem}/seed{seed}"])
        results = SteeringTrainer(recipe).run()
        stem = f"{run_name(recipe)}_{recipe.algorithm.name}_seed{seed}"
        results.pop("plot", None)
        (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2))
        shutil.copy(Path(recipe.train.output_dir) / "learning_curve.png", RESULTS / f"{stem}.png")
        print(f"{stem}: base success {results['base']['success_rate']:.2f} -> {results['final']['success_rate']:.2f}, "
              f"return {results['base']['return_mean']:.1f} -> {results['final']['return_mean']:.1f}", flush=True)


if __name__ == "__main__":
    main()
