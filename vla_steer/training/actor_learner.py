"""Actor and learner as two processes that never wait on each other, joined by files in ``train.output_dir``.

The actor runs the frozen base + head at the robot's control rate; the learner trains (on a GPU where there is
one). What flows between them is written atomically (a temporary file, then a rename), so either side can be
killed at any moment and restarted without losing anything the other side has already seen::

    transitions/episode_<n>.safetensors   actor -> learner: every chunk transition of finished episode n (features,
                                          latent, executed action, reward, discount, ...) and its env steps
    published_head.safetensors            learner -> actor: the head's weights, version = the learner's update count
    rollouts/                             the actor's LeRobotDataset, flushed per finished episode
    actor_state.json / actor_done         the actor's episode count and env steps; its budget is spent
    learner/last/                         the learner's checkpoint: algorithm, optimisers, replay buffer, sampler RNG,
                                          how many episode files it has ingested

The actor checks for a newer head between chunks (a ``stat`` and, when newer, one read): it never blocks on the
learner, and acts with the base's prior noise until the first head is published. A killed actor loses the episode
in progress only (the recording rolls back an interrupted write); on restart it numbers episodes on from the files
it wrote. A killed learner restarts from its checkpoint and re-ingests the episode files that arrived after it.
Updates follow the recipe's ratio: ``algorithm.utd`` updates per chunk transition ingested, starting once
``train.warmup_env_steps`` env steps have arrived.

This is LeRobot's actor / learner split (``lerobot.rl.actor`` / ``lerobot.rl.learner``) with the gRPC transport
replaced by files: on one machine, or two sharing a filesystem, they survive each other's restarts, which LeRobot
0.4.4's actor does not (its stream threads exit on a lost connection).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vla_steer.config import Recipe
from vla_steer.files import write_atomically

TRANSITIONS = "transitions"
HEAD_FILE = "published_head.safetensors"
ACTOR_STATE = "actor_state.json"
ACTOR_DONE = "actor_done"


def _replace_file(path: Path, write) -> None:
    """``write(tmp)`` then rename over ``path``: readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def episode_files(root: Path) -> list[Path]:
    return sorted((root / TRANSITIONS).glob("episode_*.safetensors"))


def write_episode(root: Path, index: int, rows: dict[str, torch.Tensor], env_steps: int) -> Path:
    path = root / TRANSITIONS / f"episode_{index:06d}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().cpu().contiguous() for key, value in rows.items()}
    _replace_file(path, lambda tmp: save_file(tensors, tmp, metadata={"env_steps": str(env_steps)}))
    return path


def read_episode(path: Path) -> tuple[dict[str, torch.Tensor], int]:
    with safe_open(path, framework="pt") as f:
        env_steps = int(f.metadata()["env_steps"])
    return load_file(path), env_steps


def publish_head(root: Path, algo, version: int) -> None:
    tensors = {f"{name}.{key}": value.detach().cpu().contiguous()
               for name, module in algo.head_modules().items() for key, value in module.state_dict().items()}
    _replace_file(root / HEAD_FILE, lambda tmp: save_file(tensors, tmp, metadata={"version": str(version)}))


def load_newer_head(root: Path, algo, current: int) -> int:
    """Loads the published head into ``algo`` if its version is newer than ``current``; returns the version held."""
    path = root / HEAD_FILE
    if not path.is_file():
        return current
    with safe_open(path, framework="pt") as f:
        version = int(f.metadata()["version"])
        if version <= current:
            return current
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    for name, module in algo.head_modules().items():
        prefix = f"{name}."
        module.load_state_dict({key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)})
    return version


def _build(recipe: Recipe):
    """``(accelerator, base, layout, algo)`` as the trainer builds them (same seed: same initial head)."""
    from accelerate.utils import set_seed

    from vla_steer.algorithms import build_algorithm
    from vla_steer.config import validate_recipe
    from vla_steer.pipeline import build_base, recipe_layout
    from vla_steer.training.trainer import make_accelerator

    validate_recipe(recipe)
    t = recipe.train
    if t.torch_threads:
        torch.set_num_threads(t.torch_threads)
    accelerator = make_accelerator(recipe, Path(t.output_dir))
    set_seed(t.seed)
    base = build_base(recipe, accelerator, show_progress=t.show_progress)
    layout = recipe_layout(recipe, base.adapter)
    set_seed(t.seed)
    algo = build_algorithm(recipe.algorithm, recipe.head, base.adapter, layout, accelerator)
    return accelerator, base, layout, algo


# -------------------------------------------------------------------------------------------------------------
class Actor:
    """Acts in the recipe's env until ``train.total_env_steps`` env steps of finished episodes are written."""

    def __init__(self, recipe: Recipe):
        from vla_steer.training.collector import Collector

        self.recipe, self.root = recipe, Path(recipe.train.output_dir)
        self.accelerator, self.base, self.layout, self.algo = _build(recipe)
        state_file = self.root / ACTOR_STATE
        self.state = json.loads(state_file.read_text()) if state_file.is_file() else {
            "episodes": 0, "env_steps": 0, "returns": [], "successes": [], "head_versions": []}
        # the files are the truth: an episode file written just before a kill is counted even if the state was not
        self.state["episodes"] = max(self.state["episodes"], len(episode_files(self.root)))
        self.collector = Collector(recipe, self.base, self.layout, seed=recipe.train.seed * 10_000,
                                   record_to=self.root / "rollouts",
                                   store_observations=self.algo.reencodes_observations)
        self.head_version = -1
        self.control_periods: list[float] = []

    def choose_latent(self, features: torch.Tensor) -> torch.Tensor:
        if self.head_version < 0:  # no head published yet: the base's own prior noise
            return self.algo.prior_latent(features.shape[0])
        with torch.no_grad(), self.accelerator.autocast():
            return self.algo.act(features, deterministic=False).float()

    def run(self) -> dict:
        t, a, c = self.recipe.train, self.recipe.algorithm, self.collector
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "recipe.json").write_text(json.dumps(self.recipe.to_dict(), indent=2))
        c.reset(self.state["episodes"])  # fresh start states after a restart
        pending: list[list[dict]] = [[] for _ in range(c.num_envs)]
        pending_steps = [0] * c.num_envs
        try:
            while self.state["env_steps"] < t.total_env_steps:
                self.head_version = load_newer_head(self.root, self.algo, self.head_version)
                started = time.monotonic()
                episodes_before = len(c.tracker.episodes["return"])
                transition = c.step(self.choose_latent, a.gamma, a.discount_mode)
                self.control_periods.append(time.monotonic() - started)
                for i in range(c.num_envs):
                    pending[i].append({key: value[i] for key, value in transition.items()})
                    pending_steps[i] += int(c.last_chunk_steps[i])
                for n, i in enumerate(c.last_ended):
                    self._write_episode(pending[i], pending_steps[i], episodes_before + n)
                    pending[i], pending_steps[i] = [], 0
        finally:
            c.close()  # disconnects the robot; the recording keeps every finished episode
        (self.root / ACTOR_DONE).write_text(json.dumps({"episodes": self.state["episodes"]}))
        return self.state

    def _write_episode(self, rows: list[dict], env_steps: int, tracker_index: int) -> None:
        episodes = self.collector.tracker.episodes
        stacked = {key: torch.stack([row[key] for row in rows]) for key in rows[0]}
        write_episode(self.root, self.state["episodes"], stacked, env_steps)
        self.state["episodes"] += 1
        self.state["env_steps"] += env_steps
        self.state["returns"].append(episodes["return"][tracker_index])
        self.state["successes"].append(episodes["success"][tracker_index])
        self.state["head_versions"].append(self.head_version)
        if "intervention" in stacked:  # the person took over in this episode (any of its chunks)
            self.state.setdefault("intervened", []).append(bool(stacked["intervention"].any()))
        _replace_file(self.root / ACTOR_STATE, lambda tmp: tmp.write_text(json.dumps(self.state)))


# -------------------------------------------------------------------------------------------------------------
class LearnerProcess:
    """Ingests the actor's episode files, updates, publishes the head every ``train.publish_every`` updates."""

    def __init__(self, recipe: Recipe):
        from vla_steer.training.learner import Learner

        self.recipe, self.root = recipe, Path(recipe.train.output_dir)
        self.accelerator, self.base, self.layout, self.algo = _build(recipe)
        self.adapter = self.base.adapter
        self.learner = Learner(recipe, self.algo, self.accelerator, sampler_seed=recipe.train.seed * 7919)
        self.ingested = self.rows = self.env_steps = 0
        self.checkpoint_dir = self.root / "learner" / "last"
        resume_from = self._checkpoint_to_resume() if recipe.train.resume else None
        if resume_from is not None:
            self._load_checkpoint(resume_from)
            self._log({"event": "resumed", "from": str(resume_from), "episodes": self.ingested, "updates": self.updates})

    @property
    def updates(self) -> int:
        return self.learner.updates

    def ingest(self) -> int:
        """Adds every episode file not ingested yet (in order); returns how many."""
        from vla_steer.training.trainer import learnable

        new = episode_files(self.root)[self.ingested:]
        for path in new:
            rows, env_steps = read_episode(path)
            rows = learnable(rows, self.algo)
            if next(iter(rows.values())).shape[0]:
                self.learner.add(rows)
            self.ingested, self.rows, self.env_steps = self.ingested + 1, self.rows + len(rows["reward"]), \
                self.env_steps + env_steps
        return len(new)

    def update_budget(self) -> int:
        if self.env_steps < self.recipe.train.warmup_env_steps or self.learner.buffer.size == 0:
            return 0
        return self.recipe.algorithm.utd * self.rows

    def run(self, poll_s: float = 0.05) -> dict:
        t = self.recipe.train
        metrics: dict = {}
        while True:
            ingested = self.ingest()
            while self.updates < self.update_budget():
                metrics = self.learner.update()
                if self.updates % t.publish_every == 0:
                    publish_head(self.root, self.algo, self.updates)
                    # the actor never waits, so it may be episodes ahead: they join the buffer now, not after the
                    # whole backlog of updates (which would then train on stale data only)
                    newly = self.ingest()
                    if newly:
                        ingested += newly
                        self._log({"event": "ingested", "episodes": self.ingested, "updates": self.updates})
            if ingested:
                self.save_checkpoint()
                self._log({"event": "learner", "episodes": self.ingested, "env_steps": self.env_steps,
                           "updates": self.updates, **{f"train/{k}": v for k, v in metrics.items()}})
            actor_done = (self.root / ACTOR_DONE).is_file()
            if actor_done and self.ingested == len(episode_files(self.root)) and self.updates >= self.update_budget():
                break
            if not ingested:
                time.sleep(poll_s)
        publish_head(self.root, self.algo, self.updates)
        self.save_checkpoint()
        from vla_steer.training.exporter import save_head

        save_head(self, self.root / "head")
        return {"episodes": self.ingested, "env_steps": self.env_steps, "updates": self.updates}

    def _log(self, record: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "learner_metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    # -- checkpoint: what the trainer's checkpoint holds, plus how many episode files were ingested --------------
    def save_checkpoint(self) -> None:
        from vla_steer.training import checkpoint as ckpt

        state = self.learner.state_dict()

        def write(directory: Path) -> None:
            ckpt.save_tree(directory, "algorithm", self.algo.state_dict())
            ckpt.save_tree(directory, "optimizers", self.algo.optimizer_state_dicts())
            ckpt.save_tree(directory, "buffer", state["buffer"])
            ckpt.save_tree(directory, "rng", {"sampler": state["sampler"]})
            (directory / "learner_state.json").write_text(json.dumps(
                {"ingested": self.ingested, "rows": self.rows, "env_steps": self.env_steps, "updates": self.updates,
                 "recipe": self.recipe.to_dict()}))

        write_atomically(self.checkpoint_dir, write, fixed_scratch_names=True)

    def _checkpoint_to_resume(self) -> Path | None:
        """``last``, or after a crash between the two renames of its write ``last.tmp`` (complete: its state file is
        written last) or ``last.old``."""
        last = self.checkpoint_dir
        for candidate in (last, last.with_name("last.tmp"), last.with_name("last.old")):
            if (candidate / "learner_state.json").is_file():
                return candidate
        return None

    def _load_checkpoint(self, d: Path) -> None:
        from vla_steer.training import checkpoint as ckpt

        state = json.loads((d / "learner_state.json").read_text())
        changed = ckpt.recipe_changes(state.get("recipe", {}), self.recipe.to_dict())
        if changed:
            raise ValueError(f"the learner checkpoint in {d} was trained with another recipe: {'; '.join(changed)}. "
                             "Resume with the recipe it was trained with, or another train.output_dir")
        ckpt.load_part(d, "algorithm.*", lambda: self.algo.load_state_dict(ckpt.load_tree(d, "algorithm")))
        ckpt.load_part(d, "optimizers.*", lambda: self.algo.load_optimizer_state_dicts(ckpt.load_optimizer_tree(d, "optimizers")))
        rng = ckpt.load_part(d, "rng.*", lambda: ckpt.load_tree(d, "rng"))
        ckpt.load_part(d, "buffer.*", lambda: self.learner.load_state_dict(ckpt.load_tree(d, "buffer"), rng["sampler"]))
        self.ingested, self.rows, self.env_steps = state["ingested"], state["rows"], state["env_steps"]
        self.learner.updates = state["updates"]


def main(argv: list[str] | None = None) -> int:
    """``python -m vla_steer.training.actor_learner {actor,learner} <recipe> [section.field=value ...]``"""
    from vla_steer.config import load_recipe

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or argv[0] not in ("actor", "learner"):
        print(main.__doc__, file=sys.stderr)
        return 2
    recipe = load_recipe(argv[1], argv[2:])
    result = (Actor if argv[0] == "actor" else LearnerProcess)(recipe).run()
    print(json.dumps({key: value for key, value in result.items() if not isinstance(value, list)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
