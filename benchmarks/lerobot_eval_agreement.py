"""Does LeRobot's own evaluator agree with the trainer's? Exports each run as a ``steered`` LeRobot policy
(``vla-steer push --dry-run --output-dir``), runs ``lerobot-eval --policy.path=<export>`` on the run's env with the
run's number of evaluation episodes and first evaluation seed, and compares success rates (Wilson 95% intervals,
two-proportion z-test). The base checkpoint is evaluated the same way once.

    python benchmarks/lerobot_eval_agreement.py runs/bench/lerobot_diffusion_push_*/seed*

Two trainer-side numbers per run:
* ``trainer``: the run's own final evaluation (``train.eval_num_envs`` envs, several episodes each: after its first
  episode an env autoresets without a seed);
* ``trainer_matched``: ``vla-steer eval <run> train.eval_num_envs=<episodes>``, one episode per env seeded
  ``eval_seed + i``: exactly the start states ``lerobot-eval`` uses (it seeds every episode of a batch:
  ``seed + batch index * batch size + i``), so only the noise draws differ.

On Meta-World the two protocols need not agree: an env's first episode after a seeded reset and its later,
autoreset episodes were measured to give different success rates for the same policy. Compare ``lerobot_eval``
with ``trainer_matched``. Writes ``benchmarks/results/lerobot_eval_agreement.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def wilson(successes: int, n: int, z: float = 1.96) -> list[float]:
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def two_proportion_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test (1.0 when both rates are 0 or 1)."""
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = abs(k1 / n1 - k2 / n2) / se
    return math.erfc(z / math.sqrt(2))


def lerobot_eval(policy_path: Path, recipe: dict, output_dir: Path, batch_size: int) -> dict:
    env = recipe["env"]
    if env.get("type") is None:
        raise SystemExit(f"{policy_path}: lerobot-eval needs a LeRobot env (env.type); this run used env.id {env['id']}")
    t = recipe["train"]
    command = [str(Path(sys.executable).parent / "lerobot-eval"), f"--policy.path={policy_path}",
               f"--env.type={env['type']}", *[f"--env.{k}={v}" for k, v in env["options"].items()],
               f"--eval.n_episodes={t['eval_episodes']}", f"--eval.batch_size={batch_size}", "--policy.device=cpu",
               f"--seed={t['eval_seed']}", f"--output_dir={output_dir}"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"lerobot-eval failed for {policy_path}:\n{result.stderr[-3000:]}")
    overall = json.loads((output_dir / "eval_info.json").read_text())["overall"]
    n = int(overall["n_episodes"])
    return {"success": round(overall["pc_success"] * n / 100), "episodes": n, "return_mean": overall["avg_sum_reward"]}


def rate(metrics: dict) -> dict:
    n, k = metrics["episodes"], round(metrics["success_rate"] * metrics["episodes"])
    return {"success_rate": k / n, "successes": k, "episodes": n, "wilson95": wilson(k, n),
            "return_mean": metrics["return_mean"]}


def compare(trainer: dict, matched: dict, lerobot: dict) -> dict:
    n_l, k_l = lerobot["episodes"], lerobot["success"]
    lerobot_side = {"success_rate": k_l / n_l, "successes": k_l, "episodes": n_l, "wilson95": wilson(k_l, n_l),
                    "return_mean": lerobot["return_mean"]}
    matched = rate(matched)
    return {"trainer": rate(trainer), "trainer_matched": matched, "lerobot_eval": lerobot_side,
            "p_value_matched_vs_lerobot_eval": two_proportion_p(matched["successes"], matched["episodes"], k_l, n_l)}


def main() -> None:
    from vla_steer.cli import main as cli

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished training runs (train.output_dir)")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--output", default="lerobot_eval_agreement.json")
    args = parser.parse_args()
    report, bases = {"runs": {}, "bases": {}}, {}
    for run in args.runs:
        recipe = json.loads((run / "recipe.json").read_text())
        results = json.loads((run / "results.json").read_text())
        export = run / "export"
        if cli(["push", str(run), "--repo-id", f"local/{run.parent.name}-{run.name}", "--dry-run",
                "--output-dir", str(export)]) not in (None, 0):
            raise SystemExit(f"export of {run} failed")
        matched_file = run / "eval_matched.json"
        if cli(["eval", str(run), f"train.eval_num_envs={recipe['train']['eval_episodes']}",
                "--output", str(matched_file)]) not in (None, 0):
            raise SystemExit(f"vla-steer eval of {run} failed")
        matched = json.loads(matched_file.read_text())
        steered = lerobot_eval(export, recipe, run / "lerobot_eval", args.batch_size)
        report["runs"][str(run)] = {"method": results["method"], "seed": results["seed"],
                                    **compare(results["final"], matched["steered"], steered)}
        base_path = Path(recipe["base"]["path"]).resolve()
        if str(base_path) not in bases:
            bases[str(base_path)] = compare(results["base"], matched["base"],
                                            lerobot_eval(base_path, recipe, run / "lerobot_eval_base", args.batch_size))
        print(json.dumps({str(run): report["runs"][str(run)]}, indent=1), flush=True)
    report["bases"] = bases
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / args.output).write_text(json.dumps(report, indent=2))
    print(json.dumps(bases, indent=1))
    print(f"-> {RESULTS / args.output}")


if __name__ == "__main__":
    main()
