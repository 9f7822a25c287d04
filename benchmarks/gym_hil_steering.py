"""Steering through the robot loop, in simulation: LeRobot's robot env on gym_hil PandaPickCube, the actor and the
learner as two processes (``vla_steer.training.actor_learner``), a base cloned by ``lerobot-train`` from noisy
scripted demonstrations.

Per steering seed: ``vla-steer learner`` in a child process, the actor here, ``train.total_env_steps`` env steps of
finished episodes; the reward is gym_hil's own: sparse (the cube lifted 10 cm, what LeRobot's gym_hil pipeline
rewards) or, with ``env.kwargs.reward_type=dense``, gym_hil's shaped reward (closeness + lift). Then base and steered head are evaluated on the same fixed start states (evaluation seeds from
3,000,000: disjoint from the training envs' seeds, which start at ``seed * 10,000``). Reports every seed's success
with a Wilson interval and the mean lift with a t-interval over seeds (``benchmarks/intervals.py``).

    vla-steer demos recipes/gym_hil_pick_dsrl_sac.yaml          # noisy scripted demos -> the LeRobotDataset root
    lerobot-train --policy.type=diffusion --dataset.root=<root> ...    # the base (see README, "On a real robot")
    python benchmarks/gym_hil_steering.py --base outputs/train/gym_hil_diffusion/checkpoints/last/pretrained_model \
        --seeds 0 1 2 --output benchmarks/results/gym_hil_steering_base100.json

(The measured run passed the dense reward as an override, ``"env.kwargs={image_obs: false, random_block_position:
true, reward_type: dense}"``; the recipe now carries it.)

Sparse success labels (``--recipe recipes/gym_hil_pick_sparse.yaml``: reward 1 only when the cube is lifted, the
episode's end; the base must succeed sometimes for that to teach anything) and a helping person
(``--person-every N``: a scripted person takes over every N-th training episode and picks the cube with the scripted
expert, through LeRobot's intervention steps; the evaluation runs the head alone):

    python benchmarks/gym_hil_steering.py --recipe recipes/gym_hil_pick_sparse.yaml --base <checkpoint> \
        --seeds 0 1 2 --output benchmarks/results/gym_hil_sparse_dsrl_sac.json algorithm.name=dsrl_sac
    python benchmarks/gym_hil_steering.py --recipe recipes/gym_hil_pick_sparse.yaml --base <checkpoint> \
        --person-every 4 --seeds 0 1 2 --output benchmarks/results/gym_hil_sparse_dsrl_na_person.json \
        algorithm.name=dsrl_na
    python benchmarks/gym_hil_steering.py --compare benchmarks/results/gym_hil_sparse_dsrl_na.json \\
        benchmarks/results/gym_hil_sparse_dsrl_na_person.json --output benchmarks/results/gym_hil_person_effect.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]

RECIPE = ROOT / "recipes" / "gym_hil_pick_dsrl_sac.yaml"
EVAL_SEED = 3_000_000
EVAL_ENVS = 5  # gym_hil builds an offscreen renderer per env (~200 MB) even for state observations


def run_seed(recipe: dict, seed: int, work: Path) -> Path:
    from vla_steer.config import recipe_from_dict
    from vla_steer.training.actor_learner import Actor

    recipe = {**recipe, "train": {**recipe["train"], "seed": seed, "output_dir": str(work / f"seed{seed}")}}
    recipe_file = work / f"seed{seed}.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    learner = subprocess.Popen([sys.executable, "-m", "vla_steer.training.actor_learner", "learner", str(recipe_file)],
                               env=env, stdout=open(work / f"seed{seed}_learner.log", "w"), stderr=subprocess.STDOUT)
    try:
        Actor(recipe_from_dict(recipe)).run()
        if learner.wait() != 0:
            raise RuntimeError(f"the learner failed: see {work / f'seed{seed}_learner.log'}")
    finally:
        if learner.poll() is None:
            learner.kill()
    return Path(recipe["train"]["output_dir"])


def evaluate(recipe: dict, run_dir: Path | None, episodes: int) -> dict:
    """Base (``run_dir`` None) or the run's final published head, on the fixed evaluation start states."""
    from vla_steer.config import recipe_from_dict
    from vla_steer.training.actor_learner import _build, load_newer_head
    from vla_steer.training.evaluator import Evaluator

    recipe = recipe_from_dict({**recipe, "train": {**recipe["train"], "eval_episodes": episodes,
                                                   "eval_num_envs": min(EVAL_ENVS, episodes), "eval_seed": EVAL_SEED}})
    _, base, layout, algo = _build(recipe)
    evaluator = Evaluator(recipe, base, layout, seed=EVAL_SEED)
    if run_dir is None:
        return evaluator.evaluate("base")
    version = load_newer_head(run_dir, algo, -1)
    if version < 0:
        raise RuntimeError(f"{run_dir} holds no published head")
    return {**evaluator.evaluate("policy", algo), "head_version": version}


def summarize(paths: list[Path]) -> dict:
    """Every run of several reports (one base each): success and return lifts, each paired with its own base, with
    sample std and a t-interval over all runs."""
    from intervals import t_interval

    reports = [json.loads(Path(p).read_text()) for p in paths]
    lifts = [run["lift"] for r in reports for run in r["runs"]]
    return_lifts = [run["return_lift"] for r in reports for run in r["runs"]]
    summary = {"bases": [{"base_path": r["base_path"], "base_success": r["base"]["success_rate"],
                          "steered_success": [run["success_rate"] for run in r["runs"]]} for r in reports],
               "runs": len(lifts), "success_lift_mean": float(np.mean(lifts)),
               "success_lift_std": float(np.std(lifts, ddof=1)), "success_lift_t95": t_interval(lifts),
               "return_lift_mean": float(np.mean(return_lifts)), "return_lift_std": float(np.std(return_lifts, ddof=1)),
               "return_lift_t95": t_interval(return_lifts)}
    print(json.dumps(summary, indent=2))
    return summary


def compare(without: Path, with_person: Path) -> dict:
    """Two reports on the same base and seeds, without and with the person: success per seed, and the difference
    (with minus without) paired by steering seed, with a t-interval over seeds."""
    from intervals import t_interval

    a, b = (json.loads(Path(p).read_text()) for p in (without, with_person))
    def strip(recipe: dict) -> dict:  # the recipe less the person (env.options.teleop) and the run directory
        options = {k: v for k, v in recipe["env"].get("options", {}).items() if k != "teleop"}
        return {**recipe, "env": {**recipe["env"], "options": options},
                "train": {k: v for k, v in recipe["train"].items() if k != "output_dir"}}

    if a.get("person_every") or not b.get("person_every"):
        raise SystemExit("compare takes the report without the person first, then the one with it (--person-every)")
    if a["base_path"] != b["base_path"] or [r["seed"] for r in a["runs"]] != [r["seed"] for r in b["runs"]] \
            or strip(a["recipe"]) != strip(b["recipe"]):
        raise SystemExit("compare needs two reports that differ only in the person: same base, seeds and recipe")
    differences = [rb["success_rate"] - ra["success_rate"] for ra, rb in zip(a["runs"], b["runs"])]
    summary = {"base_path": a["base_path"], "base_success": a["base"]["success_rate"],
               "without_person": [r["success_rate"] for r in a["runs"]],
               "with_person": [r["success_rate"] for r in b["runs"]], "person_every": b.get("person_every"),
               "intervened_episodes": [r.get("training_intervened_episodes") for r in b["runs"]],
               "difference_mean": float(np.mean(differences)),
               "difference_std": float(np.std(differences, ddof=1)) if len(differences) > 1 else None,
               "difference_t95": t_interval(differences) if len(differences) > 1 else None}
    print(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summarize", type=Path, nargs="+", default=None, metavar="REPORT",
                        help="only summarise finished reports (one per base) over all their runs")
    parser.add_argument("--compare", type=Path, nargs=2, default=None, metavar=("WITHOUT", "WITH"),
                        help="only compare two finished reports on one base: without and with the person")
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--person-every", type=int, default=0, metavar="N",
                        help="a scripted person takes over every N-th training episode with the scripted expert")
    parser.add_argument("--base", help="the lerobot-train checkpoint (pretrained_model directory)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "gym_hil_steering")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. train.total_env_steps=4000")
    args = parser.parse_args()
    if args.summarize:
        summary = summarize(args.summarize)
        if args.output:
            args.output.write_text(json.dumps(summary, indent=2))
        return
    if args.compare:
        summary = compare(*args.compare)
        if args.output:
            args.output.write_text(json.dumps(summary, indent=2))
        return
    if not args.base:
        parser.error("--base is required (or --summarize)")
    os.environ.setdefault("MUJOCO_GL", "egl")
    from intervals import t_interval, wilson_interval

    from vla_steer.config import load_recipe
    from vla_steer.provenance import git_commit, hardware, package_versions

    overrides = [f"base.path={args.base}", *args.overrides]
    if args.person_every:
        interventions = [[episode, 0, 100_000] for episode in range(0, 10_000, args.person_every)]
        overrides.append("env.teleop=" + json.dumps({"type": "vla_steer_scripted", "intervention_expert": "gym_hil_pick",
                                                     "interventions": interventions}))
    recipe = load_recipe(args.recipe, overrides).to_dict()
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    base = evaluate(recipe, None, args.eval_episodes)
    print(f"base: success {base['success_rate']:.2f}")
    runs = []
    for seed in args.seeds:
        run_dir = run_seed(recipe, seed, args.work)
        steered = evaluate(recipe, run_dir, args.eval_episodes)
        actor = json.loads((run_dir / "actor_state.json").read_text())
        runs.append({"seed": seed, "success_rate": steered["success_rate"],
                     "success_wilson95": wilson_interval(round(steered["success_rate"] * args.eval_episodes), args.eval_episodes),
                     "lift": steered["success_rate"] - base["success_rate"], "return_mean": steered["return_mean"],
                     "return_lift": steered["return_mean"] - base["return_mean"], "head_version": steered["head_version"],
                     "training_episodes": actor["episodes"], "training_env_steps": actor["env_steps"],
                     "training_success_rate": float(np.mean(actor["successes"])),
                     "training_intervened_episodes": sum(actor.get("intervened", [])), "action_entropy": steered["action_entropy"],
                     "action_drift": steered.get("action_drift")})
        print(f"seed {seed}: success {steered['success_rate']:.2f} (base {base['success_rate']:.2f}), return "
              f"{steered['return_mean']:.2f} (base {base['return_mean']:.2f})")
    lifts, return_lifts = [run["lift"] for run in runs], [run["return_lift"] for run in runs]
    report = {
        "task": "gym_hil/PandaPickCube-v0 (gym_manipulator, state observations, "
                f"{'random' if recipe['env']['kwargs'].get('random_block_position') else 'fixed'} cube position, "
                f"{recipe['env']['kwargs'].get('reward_type', 'sparse')} reward)",
        "method": recipe["algorithm"]["name"], "person_every": args.person_every, "base_path": args.base, "recipe": recipe,
        "evaluation_seeds": [EVAL_SEED, EVAL_SEED + min(EVAL_ENVS, args.eval_episodes) - 1], "eval_episodes": args.eval_episodes,
        "base": {"success_rate": base["success_rate"],
                 "success_wilson95": wilson_interval(round(base["success_rate"] * args.eval_episodes), args.eval_episodes),
                 "return_mean": base["return_mean"], "action_entropy": base["action_entropy"]},
        "runs": runs, "lift_mean": float(np.mean(lifts)),
        "lift_std": float(np.std(lifts, ddof=1)) if len(lifts) > 1 else None,
        "lift_t95": t_interval(lifts) if len(lifts) > 1 else None,
        "return_lift_mean": float(np.mean(return_lifts)),
        "return_lift_std": float(np.std(return_lifts, ddof=1)) if len(return_lifts) > 1 else None,
        "return_lift_t95": t_interval(return_lifts) if len(return_lifts) > 1 else None, "wall_time_s": time.time() - start,
        "git_commit": git_commit(), "versions": package_versions(), "hardware": hardware(),
    }
    print(json.dumps({k: report[k] for k in ("base", "runs", "lift_mean", "lift_t95", "return_lift_mean",
                                             "return_lift_t95")}, indent=2))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
