"""What the action critic costs on a VLA base whose context cannot be stored: updates that re-encode the batch.

DSRL-NA and LP-DS with ``critic: action`` decode actions at replayed states. For the toy SmolVLA of
``recipes/metaworld_push_smolvla_pixels.yaml`` the context is a KV cache, so the buffer keeps the processed
observations and each update encodes s and s' again (one batched prefix pass) before its decodes. This script fills
one buffer with real rollouts of that base (random BC'd weights: the cost does not depend on them), then times
updates of every method on the same buffer, round-robin so that machine noise hits all alike, one thread.

    OMP_NUM_THREADS=1 python benchmarks/reencode_cost.py            # -> benchmarks/results/reencode_cost.json

Reported: ms per update (median over rounds), the ratio to LP-DS with its latent critic (which never decodes in an
update), and the bytes one stored transition takes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from vla_steer.config import load_recipe, recipe_from_dict
from vla_steer.training import SteeringTrainer

METHODS = {"lpds_latent": {"name": "lpds", "critic": "latent"},
           "dsrl_sac": {"name": "dsrl_sac"},
           "lpds_action": {"name": "lpds", "critic": "action"},
           "dsrl_na": {"name": "dsrl_na"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="recipes/metaworld_push_smolvla_pixels.yaml")
    parser.add_argument("--fill-env-steps", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--updates-per-round", type=int, default=3)
    parser.add_argument("--work-dir", default="/tmp/reencode_cost")
    parser.add_argument("--output", default="benchmarks/results/reencode_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work_dir)
    common = [f"train.cache_dir={work / 'cache'}", "base.bc_steps=20", "demos.num_episodes=2", "train.show_progress=false",
              f"train.total_env_steps={args.fill_env_steps}", f"train.warmup_env_steps={args.fill_env_steps}",
              f"train.eval_every={args.fill_env_steps}", "train.eval_episodes=1", "train.eval_num_envs=1",
              "train.entropy_states=1", "train.entropy_draws=4", "train.resume=false",
              f"train.buffer_size={args.fill_env_steps}"]
    trainers = {}
    for name, algorithm in METHODS.items():
        recipe = load_recipe(args.recipe, common + [f"train.output_dir={work / name}"]).to_dict()
        shared = {key: recipe["algorithm"][key] for key in ("batch_size", "utd", "gamma")}
        trainers[name] = SteeringTrainer(recipe_from_dict({**recipe, "algorithm": {**algorithm, **shared}}))
    filler = trainers["lpds_action"]  # stores the observations (the others ignore those fields)
    filler.run()
    for trainer in trainers.values():
        if trainer is not filler:
            trainer.learner.buffer.load_state_dict(filler.learner.buffer.state_dict())
    storage, rows = filler.buffer.storage, len(filler.buffer)
    bytes_per_transition = {key: value[0].numel() * value.element_size() for key, value in storage.items()}

    times = {name: [] for name in trainers}
    for name, trainer in trainers.items():  # warm-up: lazy optimiser state, allocator
        trainer.learner.update()
    for _ in range(args.rounds):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            for _ in range(args.updates_per_round):
                trainer.learner.update()
            times[name].append((time.perf_counter() - start) / args.updates_per_round * 1000)
    median = {name: statistics.median(values) for name, values in times.items()}
    report = {
        "recipe": args.recipe, "batch_size": filler.recipe.algorithm.batch_size, "buffer_rows": rows,
        "threads": torch.get_num_threads(), "ms_per_update": median,
        "ratio_to_lpds_latent": {name: value / median["lpds_latent"] for name, value in median.items()},
        "ms_per_update_all_rounds": times,
        "stored_bytes_per_transition": sum(bytes_per_transition.values()),
        "stored_observation_bytes_per_transition": sum(v for k, v in bytes_per_transition.items() if "obs" in k.split("/")[0]),
        "stored_fields": bytes_per_transition,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))
    for name in trainers:
        print(f"{name:12s} {median[name]:9.1f} ms/update   x{report['ratio_to_lpds_latent'][name]:.2f}")
    print(f"stored per transition: {report['stored_bytes_per_transition']:,} bytes "
          f"({report['stored_observation_bytes_per_transition']:,} of them observations)")


if __name__ == "__main__":
    main()
