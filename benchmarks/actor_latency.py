"""The actor's control loop: does a learner training beside it slow the robot down?

Measures the period between two actions sent to the env (``LeRobotRobotEnv``'s watchdog timings: the first action
of a chunk includes the encode + head + decode) in LeRobot's gym_hil PandaPickCube (state observations, unpaced),
with a tiny random LeRobot DiffusionPolicy as the base:

* ``base alone``: the actor with no head published (it acts with the base's prior noise) and no learner;
* ``with learner``: the same actor acting with a head while ``vla-steer learner`` trains in a second process.

Rounds alternate between the two so both see the same machine; each process runs one torch thread. Goal
(issue 12): p99 ratio <= 1.1.

    python benchmarks/actor_latency.py --rounds 3 --env-steps 1200 --output benchmarks/results/actor_latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]


def recipe(base: Path, output_dir: Path, env_steps: int) -> dict:
    return {"name": "actor_latency",
            "env": {"type": "gym_manipulator", "name": "gym_hil", "task": "PandaPickCube-v0", "fps": 10, "num_envs": 1,
                    "kwargs": {"image_obs": False}},
            "base": {"path": str(base), "adapter_kwargs": {"num_inference_steps": 10}},
            "head": {"hidden_dim": 256, "num_layers": 3}, "algorithm": {"name": "dsrl_na", "batch_size": 256, "utd": 2},
            "safety": {"control_period_s": 60.0, "pace_to_fps": False},  # the watchdog only times the periods
            "train": {"total_env_steps": env_steps, "warmup_env_steps": 200, "publish_every": 20, "torch_threads": 1,
                      "output_dir": str(output_dir), "show_progress": False}}


def periods_ms(actor) -> np.ndarray:
    env = actor.collector.envs.envs[0].unwrapped
    return np.asarray(env.watchdog.periods) * 1000.0


def run_actor(config: dict, with_learner: bool) -> tuple[np.ndarray, int]:
    from vla_steer.config import recipe_from_dict
    from vla_steer.training.actor_learner import Actor

    learner = None
    if with_learner:
        import yaml

        recipe_file = Path(config["train"]["output_dir"]).with_suffix(".yaml")
        recipe_file.write_text(yaml.safe_dump(config))
        learner = subprocess.Popen([sys.executable, "-m", "vla_steer.training.actor_learner", "learner", str(recipe_file)],
                                   env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(5.0)  # its startup (imports, base) is not what is measured
    actor = Actor(recipe_from_dict(config))
    state = actor.run()
    if learner is not None:  # only the actor's periods are measured: the learner's remaining updates are not waited for
        learner.terminate()
        learner.wait(timeout=60)
    return periods_ms(actor), len([v for v in state["head_versions"] if v >= 0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--env-steps", type=int, default=1200)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch

    from tiny_common import save_gym_hil_diffusion_base
    from vla_steer.provenance import git_commit, hardware, package_versions

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="actor_latency_"))
    base = save_gym_hil_diffusion_base(work / "base")
    samples: dict[str, list[np.ndarray]] = {"base alone": [], "with learner": []}
    headed_episodes = 0
    for r in range(args.rounds):
        for name in ("base alone", "with learner"):
            periods, headed = run_actor(recipe(base, work / f"{name.replace(' ', '_')}_{r}", args.env_steps),
                                        name == "with learner")
            samples[name].append(periods)
            headed_episodes += headed
            print(f"round {r} {name}: p50 {np.percentile(periods, 50):.2f} ms, p99 {np.percentile(periods, 99):.2f} ms")
    stats = {name: {"p50_ms": float(np.percentile(np.concatenate(v), 50)), "p99_ms": float(np.percentile(np.concatenate(v), 99)),
                    "periods": int(sum(len(x) for x in v))} for name, v in samples.items()}
    report = {
        **stats,
        "p50_ratio": stats["with learner"]["p50_ms"] / stats["base alone"]["p50_ms"],
        "p99_ratio": stats["with learner"]["p99_ms"] / stats["base alone"]["p99_ms"],
        "episodes_acted_with_a_published_head": headed_episodes,
        "rounds": args.rounds, "env_steps_per_run": args.env_steps,
        "git_commit": git_commit(), "versions": package_versions(), "hardware": hardware(),
    }
    print(json.dumps({k: v for k, v in report.items() if k not in ("versions", "hardware")}, indent=2))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
