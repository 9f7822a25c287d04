"""DSRL-NA (its action critic re-encodes stored observations) vs LP-DS with its latent critic, on the toy SmolVLA.

One BC'd toy SmolVLA base (``recipes/metaworld_push_smolvla_pixels.yaml``: Meta-World push-v3 from 64 px pixels, the
state and the task text), steered by each method with the same seeds and the same budget (env steps, updates per
env step, batch size: fixed here before the runs), then the saved head and the base evaluated on the reported seeds
of ``benchmarks/PROTOCOL.md`` (env seeds 2_000_000 + i, disjoint from training and from the tuning evaluations the
learning curves use). Resumable: a finished run's report is kept; an interrupted one resumes from its checkpoint.

    OMP_NUM_THREADS=1 python benchmarks/vla_action_critic.py             # -> benchmarks/results/vla_action_critic.json
    python benchmarks/vla_action_critic.py --summarize

Only one base (the protocol's three bases x two seeds did not fit this CPU's time: DSRL-NA's re-encoding updates are
~10x the latent critic's, benchmarks/results/reencode_cost.json). The summary says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from intervals import sample_std, t_interval, wilson_interval  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "vla_action_critic.json"
REPORT_SEED, REPORT_EPISODES = 2_000_000, 50
METHODS = {"dsrl_na": {"name": "dsrl_na"}, "lpds_latent": {"name": "lpds", "critic": "latent", "delta": 2.0, "dual_lr": 0.05}}


def run_dir(work: Path, method: str, seed: int) -> Path:
    return work / f"{method}_seed{seed}"


def run_one(args, method: str, seed: int) -> dict:
    from vla_steer.config import load_recipe, recipe_from_dict
    from vla_steer.training import SteeringTrainer
    from vla_steer.training.evaluator import Evaluator

    out = run_dir(Path(args.work_dir), method, seed)
    report_file = out / "report.json"
    if report_file.is_file():
        return json.loads(report_file.read_text())
    recipe = load_recipe(args.recipe, [f"train.output_dir={out / 'train'}", f"train.seed={seed}",
                                       f"train.total_env_steps={args.env_steps}", f"train.eval_every={args.env_steps // 3}",
                                       f"train.checkpoint_every={args.env_steps // 6}", f"train.buffer_size={args.env_steps}",
                                       "train.show_progress=false", "train.eval_episodes=20"]).to_dict()
    algorithm = {**METHODS[method], "batch_size": args.batch_size, "utd": args.utd}
    recipe = recipe_from_dict({**recipe, "algorithm": algorithm})
    trainer = SteeringTrainer(recipe)
    results = trainer.run()
    train = dataclasses.replace(recipe.train, eval_episodes=REPORT_EPISODES, eval_num_envs=10)
    evaluator = Evaluator(dataclasses.replace(recipe, train=train), trainer.base, trainer.layout, seed=REPORT_SEED)
    report = {"method": method, "seed": seed, "budget_env_steps": args.env_steps, "utd": args.utd,
              "batch_size": args.batch_size, "updates": results["updates"], "wall_time_s": results["wall_time_s"],
              "reported_evaluation_seeds": [REPORT_SEED + i for i in range(10)], "git_commit": results.get("git_commit"),
              "base_policy": results.get("base_policy")}
    for label, mode in (("base", "base"), ("steered", "policy")):
        metrics = evaluator.evaluate(mode, trainer.algo)
        successes = round(metrics["success_rate"] * metrics["episodes"])
        report[label] = {**metrics, "successes": successes, "success_wilson95": wilson_interval(successes, int(metrics["episodes"]))}
    out.mkdir(parents=True, exist_ok=True)
    report_file.write_text(json.dumps(report, indent=2))
    return report


def summarize(work: Path) -> dict:
    reports = [json.loads(f.read_text()) for f in sorted(work.glob("*/report.json"))]
    summary = {"runs": len(reports), "bases": 1, "note": "one BC base, 3 steering seeds per method, equal budgets; "
               "reported seeds 2_000_000 + i, 50 episodes per evaluation", "methods": {}}
    for method in METHODS:
        rows = [r for r in reports if r["method"] == method]
        if not rows:
            continue
        steered = [r["steered"]["success_rate"] for r in rows]
        lift = [r["steered"]["success_rate"] - r["base"]["success_rate"] for r in rows]
        entry = {"seeds": [r["seed"] for r in rows], "base_success": [r["base"]["success_rate"] for r in rows],
                 "steered_success": steered, "steered_return": [r["steered"]["return_mean"] for r in rows],
                 "action_entropy": [r["steered"]["action_entropy"] for r in rows],
                 "wall_time_s": [r["wall_time_s"] for r in rows], "updates": [r["updates"] for r in rows],
                 "steered_mean": float(np.mean(steered))}
        if len(rows) > 1:
            entry.update(steered_sd=sample_std(steered), steered_ci95=t_interval(steered),
                         lift_mean=float(np.mean(lift)), lift_ci95=t_interval(lift))
        summary["methods"][method] = entry
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "metaworld_push_smolvla_pixels.yaml"))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--env-steps", type=int, default=12_000)
    parser.add_argument("--utd", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "vla_action_critic"))
    parser.add_argument("--summarize", action="store_true", help="summarise finished runs only")
    args = parser.parse_args()
    if not args.summarize:
        for seed in args.seeds:
            for method in args.methods:
                report = run_one(args, method, seed)
                print(f"{method} seed {seed}: base {report['base']['success_rate']:.2f} -> steered "
                      f"{report['steered']['success_rate']:.2f} ({report['wall_time_s'] / 60:.0f} min)", flush=True)
    print(json.dumps(summarize(Path(args.work_dir)), indent=2))


if __name__ == "__main__":
    main()
