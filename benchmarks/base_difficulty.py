"""How hard a task's base is, on tuning seeds only: the check a grid task passes before its reported runs.

    python benchmarks/base_difficulty.py recipes/metaworld_push_lpds.yaml env.id=metaworld/drawer-open-v3 \\
        --noise 0.5 1.0 1.5 --episodes 50

For each demonstration action noise, builds the base the suite's first base would be (``demos.seed = base.seed =
0``) and evaluates it with prior noise on the tuning evaluation seeds (``train.eval_seed``, 1e6 + i), never on the
reported ones. A base at 0 or at 1 leaves a steering method nothing to show (sparse success never seen, or no room
above), so such a task is redefined before its runs (benchmarks/PROTOCOL.md). Prints one line per setting and writes
``benchmarks/results/base_difficulty/<task>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vla_steer.config import load_recipe
from vla_steer.training.evaluator import EVAL_SEED
from intervals import wilson_interval

RESULTS = Path(__file__).parent / "results" / "base_difficulty"
REPORTED_SEED = 2_000_000  # the suite's reported evaluation seeds start here (benchmarks/suite.yaml)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--noise", type=float, nargs="+", required=True, help="demos.action_noise values to try")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--cache-dir", default="benchmarks/suite_runs/cache", help="where built bases are kept")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from accelerate import Accelerator

    from vla_steer.adapters.base import LatentLayout
    from vla_steer.pipeline import build_base
    from vla_steer.training.evaluator import Evaluator

    rows = []
    for noise in args.noise:
        recipe = load_recipe(args.recipe, [*args.overrides, f"demos.action_noise={noise}", "demos.seed=0", "base.seed=0",
                                           f"train.eval_episodes={args.episodes}", f"train.cache_dir={args.cache_dir}",
                                           "train.show_progress=false"])
        if not (EVAL_SEED <= recipe.train.eval_seed and recipe.train.eval_seed + args.episodes <= REPORTED_SEED):
            raise SystemExit(f"train.eval_seed {recipe.train.eval_seed}: use the tuning seeds ({EVAL_SEED} up to "
                             f"{REPORTED_SEED} - episodes), never the reported ones")
        base = build_base(recipe, Accelerator(cpu=True), show_progress=False)
        layout = LatentLayout.from_head(recipe.head, base.adapter.noise_shape)
        metrics = Evaluator(recipe, base, layout, seed=recipe.train.eval_seed).evaluate("base")
        successes = round(metrics["success_rate"] * metrics["episodes"])
        rows.append({"action_noise": noise, "num_demos": recipe.demos.num_episodes, "episodes": int(metrics["episodes"]),
                     "success_rate": metrics["success_rate"], "success_wilson95": wilson_interval(successes, int(metrics["episodes"])),
                     "return_mean": metrics["return_mean"], "eval_seed": recipe.train.eval_seed})
        print(f"{recipe.env.id} noise {noise}: success {metrics['success_rate']:.2f} over {int(metrics['episodes'])} "
              f"tuning episodes, return {metrics['return_mean']:.1f}", flush=True)
        RESULTS.mkdir(parents=True, exist_ok=True)  # after every setting: a crash keeps the rows before it
        output = RESULTS / f"{recipe.env.id.replace('/', '_')}.json"
        output.write_text(json.dumps({"recipe": args.recipe, "overrides": args.overrides, "base_seed": 0, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
