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
        base_tag = "" if recipe.base.type == "diffusion" else f"_{recipe.base.type}"  # built-in DDIM: historic names
        stem = f"{recipe.env.id.replace('/', '_')}{base_tag}_{recipe.algorithm.name}_seed{seed}"
        results.pop("plot", None)
        (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2))
        shutil.copy(Path(recipe.train.output_dir) / "learning_curve.png", RESULTS / f"{stem}.png")
        print(f"{stem}: base success {results['base']['success_rate']:.2f} -> {results['final']['success_rate']:.2f}, "
              f"return {results['base']['return_mean']:.1f} -> {results['final']['return_mean']:.1f}", flush=True)


if __name__ == "__main__":
    main()
