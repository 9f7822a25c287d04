"""Two checks behind statements in benchmarks/PROTOCOL.md, rerunnable:

    python benchmarks/protocol_checks.py start-states      # Meta-World: first resets of fresh envs vs later resets
    python benchmarks/protocol_checks.py hopper-bases      # Hopper's 3 bases: their demonstrations and evaluations

``start-states``: the reported evaluation seeds 10 envs once and resets each without a seed after every episode;
this compares object and goal positions of first resets (a freshly made env per seed: Meta-World seeds its sampler
at construction) with later resets of one env. ``hopper-bases``: each Hopper base of the suite (built into the
suite's cache if missing), its demonstration set's episode lengths, and its evaluation on the reported seeds,
computed afresh (not read from the evaluation cache).
Writes ``benchmarks/results/protocol_checks_<check>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
RESULTS = Path(__file__).parent / "results"


def start_states(count: int = 120, task: str = "metaworld/push-v3") -> dict:
    from vla_steer.envs import make_env

    def positions(observation):  # object xyz (4:7) and goal xyz (last 3) of Meta-World's flat observation
        return np.r_[observation[4:7], observation[-3:]]

    first = []
    for i in range(count):
        env = make_env(task, seed=3_000_000 + i)
        first.append(positions(env.reset(seed=3_000_000 + i)[0]))
        env.close()
    env = make_env(task, seed=4_000_000)
    env.reset(seed=4_000_000)
    later = [positions(env.reset()[0]) for _ in range(count)]
    env.close()
    first, later = np.array(first), np.array(later)
    return {"task": task, "episodes_each": count, "columns": ["object x", "y", "z", "goal x", "y", "z"],
            "first_mean": first.mean(0).tolist(), "later_mean": later.mean(0).tolist(),
            "first_std": first.std(0).tolist(), "later_std": later.std(0).tolist(),
            "max_mean_difference_m": float(np.abs(first.mean(0) - later.mean(0)).max()),
            "max_std_difference_m": float(np.abs(first.std(0) - later.std(0)).max())}


def hopper_bases() -> dict:
    import suite
    import torch

    from vla_steer.config import recipe_from_dict
    from vla_steer.data.demos import load_demonstrations
    from vla_steer.hub.fingerprint import base_fingerprint
    from vla_steer.pipeline import ensure_demos
    from vla_steer.provenance import hardware
    from vla_steer.training import SteeringTrainer
    from vla_steer.training.evaluator import Evaluator

    torch.set_num_threads(1)
    spec = suite.load_suite(Path(__file__).parent / "suite.yaml")
    protocol = spec["protocol"]
    runs = [r for r in suite.plan(spec) if (r.family, r.task, r.method, r.seed) == ("locomotion", "Hopper-v5", "lpds", 0)]
    bases = {}
    for run in runs:
        recipe_dict = json.loads(json.dumps(run.recipe))
        recipe_dict["train"].update(output_dir=f"runs/protocol_checks/hopper_base{run.base}", resume=False)
        recipe = recipe_from_dict(recipe_dict)
        demos = load_demonstrations(ensure_demos(recipe, show_progress=False))
        trainer = SteeringTrainer(recipe)  # builds the base into the suite's cache if it is not there
        episodes = protocol["report_episodes"]
        train = dataclasses.replace(recipe.train, eval_episodes=episodes,
                                    eval_num_envs=min(episodes, recipe.train.eval_num_envs))
        metrics = Evaluator(dataclasses.replace(recipe, train=train), trainer.base, trainer.layout,
                            seed=protocol["report_eval_seed"]).evaluate("base")
        bases[run.base] = {"weights": base_fingerprint(trainer.adapter)["weights"][:16],
                           "demonstration_steps": int(demos.actions.shape[0]),
                           "demonstration_episodes": recipe.demos.num_episodes,
                           **{k: metrics[k] for k in ("return_mean", "return_std", "episode_length", "action_entropy")}}
        print(f"Hopper base {run.base}: {bases[run.base]}", flush=True)
    return {"cpu": hardware()["processor"], "bases": bases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("check", choices=["start-states", "hopper-bases"])
    args = parser.parse_args()
    result = start_states() if args.check == "start-states" else hopper_bases()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"protocol_checks_{args.check.replace('-', '_')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2)[:1500], f"\n-> {path}", sep="")


if __name__ == "__main__":
    main()
