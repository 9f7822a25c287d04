"""One LP-DS head across three Meta-World tasks against one head per task, at equal total env steps.

The base is the task-conditioned built-in DDIM policy of ``recipes/metaworld_multitask_lpds.yaml`` (one base, cloned
on 10 noisy scripted demos of each task, its state ending with the task's one-hot). Per steering seed:

* one head on the task set for ``--env-steps`` env steps (its envs spread evenly over the three tasks);
* three heads, one per task (``env.only_task``), ``--env-steps / 3`` env steps each: the same total.

Every saved head is evaluated on the reported seeds of ``benchmarks/PROTOCOL.md`` (2_000_000 + i), 20 episodes per
task, beside the base on the same episodes. Resumable (finished runs keep their report).

    OMP_NUM_THREADS=1 python benchmarks/multitask.py                 # -> benchmarks/results/multitask.json
    python benchmarks/multitask.py --summarize
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from intervals import sample_std, t_interval  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "multitask.json"
REPORT_SEED, EPISODES_PER_TASK = 2_000_000, 20


def run(args, name: str, seed: int, overrides: list[str], env_steps: int) -> dict:
    """Train one head (or resume it) and evaluate the saved head and the base on the reported seeds, per task."""
    from vla_steer.config import load_recipe
    from vla_steer.envs.registry import task_ids
    from vla_steer.training import SteeringTrainer
    from vla_steer.training.evaluator import Evaluator

    out = Path(args.work_dir) / f"{name}_seed{seed}"
    if (out / "report.json").is_file():
        return json.loads((out / "report.json").read_text())
    recipe = load_recipe(args.recipe, overrides + [
        f"train.output_dir={out / 'train'}", f"train.seed={seed}", f"train.total_env_steps={env_steps}",
        f"train.warmup_env_steps={env_steps // 10}", f"train.eval_every={env_steps // 3}",
        f"train.checkpoint_every={env_steps // 3}", "train.show_progress=false"])
    trainer = SteeringTrainer(recipe)
    results = trainer.run()
    n_tasks = 1 if recipe.env.only_task is not None else len(task_ids(recipe.env.id))
    train = dataclasses.replace(recipe.train, eval_episodes=EPISODES_PER_TASK * n_tasks, eval_num_envs=2 * n_tasks)
    evaluator = Evaluator(dataclasses.replace(recipe, train=train), trainer.base, trainer.layout, seed=REPORT_SEED)
    tasks = task_ids(recipe.env.id)
    report = {"name": name, "seed": seed, "env_steps": env_steps, "updates": results["updates"],
              "wall_time_s": results["wall_time_s"], "git_commit": results.get("git_commit")}
    for label, mode in (("base", "base"), ("steered", "policy")):
        metrics = evaluator.evaluate(mode, trainer.algo)
        report[label] = metrics.get("per_task") or {tasks[recipe.env.only_task]: metrics}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def summarize(work: Path) -> dict:
    """Mean success over the three tasks per seed, for the multi-task head and for the three single-task heads."""
    reports = [json.loads(f.read_text()) for f in sorted(work.glob("*/report.json"))]
    by_seed: dict[int, dict] = {}
    for r in reports:
        entry = by_seed.setdefault(r["seed"], {"multi": {}, "single": {}, "base": {}, "multi_return": {},
                                               "single_return": {}, "base_return": {}})
        kind = "multi" if r["name"] == "multitask" else "single"
        for task, metrics in r["steered"].items():
            entry[kind][task] = metrics["success_rate"]
            entry[f"{kind}_return"][task] = metrics["return_mean"]
        for task, metrics in r["base"].items():
            entry["base"].setdefault(task, metrics["success_rate"])
            entry["base_return"].setdefault(task, metrics["return_mean"])
    complete = {seed: e for seed, e in by_seed.items() if len(e["multi"]) == 3 and len(e["single"]) == 3}
    summary = {"note": "one task-conditioned base; per seed one head on 3 tasks vs 3 single-task heads at equal total "
                       f"env steps; reported seeds {REPORT_SEED} + i, {EPISODES_PER_TASK} episodes per task",
               "seeds": sorted(complete), "per_seed": complete}
    if complete:
        multi = [np.mean(list(e["multi"].values())) for e in complete.values()]
        single = [np.mean(list(e["single"].values())) for e in complete.values()]
        base = [np.mean(list(e["base"].values())) for e in complete.values()]
        diff = [m - s for m, s in zip(multi, single)]
        summary.update(base_mean=float(np.mean(base)), multi_mean=float(np.mean(multi)), single_mean=float(np.mean(single)))
        returns = {kind: [np.mean(list(e[f"{kind}_return"].values())) for e in complete.values()]
                   for kind in ("base", "multi", "single")}
        summary.update({f"{kind}_return_mean": float(np.mean(v)) for kind, v in returns.items()})
        if len(complete) > 1:
            summary.update(multi_sd=sample_std(multi), single_sd=sample_std(single), multi_ci95=t_interval(multi),
                           single_ci95=t_interval(single), multi_minus_single=float(np.mean(diff)),
                           multi_minus_single_ci95=t_interval(diff),
                           multi_minus_single_return_ci95=t_interval(
                               [m - x for m, x in zip(returns["multi"], returns["single"])]))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "metaworld_multitask_lpds.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--env-steps", type=int, default=30_000, help="total per seed, split evenly for single-task heads")
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "multitask"))
    parser.add_argument("--summarize", action="store_true")
    args = parser.parse_args()
    if not args.summarize:
        for seed in args.seeds:
            run(args, "multitask", seed, [], args.env_steps)
            for k in range(3):
                run(args, f"task{k}", seed, [f"env.only_task={k}"], args.env_steps // 3)
            print(json.dumps(summarize(Path(args.work_dir)), indent=2), flush=True)
    print(json.dumps(summarize(Path(args.work_dir)), indent=2))


if __name__ == "__main__":
    main()
