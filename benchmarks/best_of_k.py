"""Critic-guided best-of-K at evaluation vs. plain sampling from the head, on finished benchmark runs.

    python benchmarks/best_of_k.py runs/bench/metaworld_push_lpds/seed* runs/bench/metaworld_push_dsrl_sac/seed* --k 1 8

Loads each run's last checkpoint (head + critics), evaluates it on the recipe's fixed evaluation seeds for every
K, and writes ``benchmarks/results/best_of_k.json``. K = 1 is the head alone, so the comparison is paired.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from vla_steer.config import recipe_from_dict
from vla_steer.training import SteeringTrainer

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--output", default="best_of_k.json", help="file name under benchmarks/results/")
    args = parser.parse_args()
    rows = []
    for run_dir in map(Path, args.run_dirs):
        saved = json.loads((run_dir / "recipe.json").read_text())
        for k in args.k:
            recipe = recipe_from_dict(saved, [f"train.output_dir={run_dir}", f"train.eval_best_of_k={k}", "train.show_progress=false"])
            trainer = SteeringTrainer(recipe)
            if not trainer.load_checkpoint():
                raise FileNotFoundError(f"no checkpoint in {trainer.checkpoint_dir}")
            metrics = trainer.evaluate("policy")
            rows.append({"run": str(run_dir), "task": recipe.env.id, "method": recipe.algorithm.name, "seed": recipe.train.seed,
                         "k": k, "env_steps": trainer.env_steps, **metrics})
            print(f"{run_dir} K={k}: success {metrics['success_rate']:.2f}, return {metrics['return_mean']:.1f}, "
                  f"entropy {metrics['action_entropy']:.2f}", flush=True)
    summary = {}
    for method in sorted({r["method"] for r in rows}):
        for k in args.k:
            success = np.array([r["success_rate"] for r in rows if r["method"] == method and r["k"] == k])
            summary[f"{method}/K={k}"] = {"success_mean": float(success.mean()), "success_std": float(success.std()),
                                          "seeds": len(success)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / args.output).write_text(json.dumps({"runs": rows, "summary": summary}, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
