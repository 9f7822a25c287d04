"""Does the base of an image recipe look at its camera? Base success with the real image vs. a blank one.

Same evaluation seeds for both (the trainer's fixed evaluation stream), base policy only (prior noise):

    python benchmarks/image_ablation.py recipes/metaworld_push_smolvla_pixels.yaml --episodes 50
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vla_steer.adapters.base import LatentLayout
from vla_steer.config import load_recipe
from vla_steer.envs.registry import IMAGE_KEY
from vla_steer.pipeline import build_base
from vla_steer.training.evaluator import Evaluator

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe, args.overrides + [f"train.eval_episodes={args.episodes}", "train.show_progress=false",
                                                        "train.output_dir=runs/image_ablation", "train.resume=false"])
    if recipe.env.observation != "pixels_state":
        parser.error(f"{args.recipe} has no image observations (env.observation: {recipe.env.observation})")
    base = build_base(recipe, show_progress=False)
    evaluator = Evaluator(recipe, base, LatentLayout.from_head(recipe.head, base.adapter.noise_shape),
                          seed=recipe.train.eval_seed)
    results = {"recipe": recipe.name, "episodes": args.episodes}
    seeing = base.observations.preprocessor  # the base's own preprocessor, which the camera image goes through
    for name, blank in (("image", False), ("blank_image", True)):
        base.observations.preprocessor = (
            (lambda batch: seeing({**batch, IMAGE_KEY: torch.full_like(batch[IMAGE_KEY], 0.5)})) if blank else seeing)
        metrics = evaluator.evaluate("base")
        results[name] = {key: metrics[key] for key in ("success_rate", "return_mean", "return_std")}
        print(f"{name}: success {metrics['success_rate']:.2f}, return {metrics['return_mean']:.1f}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{recipe.name}_image_ablation.json"
    out.write_text(json.dumps(results, indent=2))
    print(out)


if __name__ == "__main__":
    main()
