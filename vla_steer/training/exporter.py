"""The exporter: what a finished run leaves behind — ``results.json``, ``learning_curve.png`` and ``head/``.

``head/`` holds the head in the hub format (``head_config.json`` + ``head.safetensors``: the acting modules plus
the latent critic Q^W(s, z), for best-of-K selection in a deployed policy). ``results.json`` says what was
steered (the base's source, revision and fingerprint), with which code (git commit, package versions, hardware)
and how it did (base and steered metrics per evaluation, on the evaluation seeds it names).
"""

from __future__ import annotations

import json
from pathlib import Path

from vla_steer.provenance import hardware, package_versions


def run_provenance(trainer) -> dict:
    """Where the base came from, the code and the machine: what a reader needs to trust or rerun a result."""
    from vla_steer.hub.fingerprint import base_fingerprint
    base = trainer.base
    t = trainer.recipe.train
    return {
        "base_policy": {"source": base.source, "revision": base.revision, "family": trainer.adapter.family,
                 "fingerprint": base_fingerprint(trainer.adapter)},
        "evaluation_seeds": [t.eval_seed + i for i in range(min(t.eval_num_envs, t.eval_episodes))],
        "training_env_seed": trainer.env_seed,
        "git_commit": trainer.git_commit,  # read when the run started: the code the process runs
        "versions": package_versions(),
        "hardware": {**hardware(), "num_processes": trainer.accelerator.num_processes},
    }


def export_run(trainer, wall_time: float) -> dict:
    """Write ``results.json``, the learning curve and ``head/`` for a finished run (main process only)."""
    from vla_steer.training.plots import plot_learning_curve

    recipe, history = trainer.recipe, trainer.history
    env = recipe.env.id if recipe.env.type is None else f"{recipe.env.type}/{trainer.base.lerobot_env_config.task}"
    results = {
        "recipe": recipe.name, "task": env, "method": recipe.algorithm.name, "seed": recipe.train.seed,
        "env_steps": history[-1]["env_steps"] if history else 0, "updates": trainer.updates,
        "num_processes": trainer.accelerator.num_processes, "wall_time_s": wall_time,
        "base": trainer.base_metrics, "final": history[-1] if history else {}, "history": history,
        "config": recipe.to_dict(), **run_provenance(trainer),
    }
    output_dir = trainer.output_dir
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    results["plot"] = str(plot_learning_curve(results, output_dir / "learning_curve.png"))
    save_head(trainer, output_dir / "head")
    return results


def save_head(trainer, directory: Path) -> Path:
    """The trained head through the hub format's one writer: the acting modules and the latent critic, with what it
    was trained on (the base's fingerprint, shapes, feature options, algorithm)."""
    from vla_steer.hub import write_head
    from vla_steer.hub.fingerprint import base_fingerprint
    from vla_steer.hub.schema import head_fields
    from vla_steer.steering.best_of_k import latent_critic

    algo, recipe = trainer.algo, trainer.recipe
    head_config = {
        "critic": "latent", "algorithm": recipe.algorithm.name, "head": head_fields(recipe.head),
        "noise_shape": list(trainer.adapter.noise_shape), "latent_shape": list(trainer.layout.latent_shape),
        "feature_dim": trainer.adapter.feature_dim, "adapter": trainer.adapter.family,
        "env": recipe.env.id or recipe.env.type, "base_fingerprint": base_fingerprint(trainer.adapter)}
    return write_head(directory, {**algo.head_modules(), "critic": latent_critic(algo)}, head_config)
