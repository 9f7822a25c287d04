"""The steering trainer: a collector, a learner, an evaluator and an exporter, with exact resume.

One loop iteration = one *vectorised chunk step* of the collector (every env executes ``n_action_steps``
actions decoded from the head's latent), its transition into the learner, ``utd * num_envs`` updates, then, when one
is due, an evaluation of the updated head (so the last evaluation scores exactly the head that is saved).
A checkpoint is written between the env step and the updates, so a resumed run's next update is bit-identical
to the uninterrupted run's (envs are reset on resume: the episode in progress at the checkpoint is lost, the
transitions already collected are not).

Under ``accelerate launch`` every process steps its own envs (seeded apart) and keeps its own buffer;
gradients are averaged across processes, so the head stays identical everywhere.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from vla_steer.algorithms import SteeringAlgorithm, build_algorithm
from vla_steer.algorithms.stored_observations import image_keys_stored_as_bytes
from vla_steer.config import Recipe, validate_recipe
from vla_steer.files import write_atomically
from vla_steer.provenance import git_commit
from vla_steer.training import checkpoint as ckpt
from vla_steer.training.collector import Collector
from vla_steer.training.evaluator import Evaluator
from vla_steer.training.exporter import export_run
from vla_steer.training.layout_check import layout_warning
from vla_steer.training.learner import Learner

from vla_steer.envs.robot_env import ENV_TYPE as ROBOT_ENV_TYPE, EmergencyStop
from vla_steer.robot.safety import UnsafeActionError, WatchdogError

StopRequested = (EmergencyStop, WatchdogError, UnsafeActionError)  # raised before an action is sent


def make_accelerator(recipe: Recipe, output_dir: Path) -> Accelerator:
    # cpu=True only when no GPU exists: it is what lets torchrun-launched CPU processes form a gloo group
    t = recipe.train
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=t.mixed_precision,
                       log_with=t.log_with or None, project_dir=str(output_dir))


class SteeringTrainer:
    """Trains a steering head for ``recipe``; ``base`` (a :class:`vla_steer.pipeline.SteeringBase`, or a bare adapter
    for built-in envs) defaults to the recipe's own."""

    def __init__(self, recipe: Recipe, base=None, accelerator: Accelerator | None = None):
        from vla_steer.pipeline import SteeringBase, build_base, recipe_layout

        validate_recipe(recipe)  # a recipe built in code is checked as a loaded one is: before any work
        self.recipe = recipe
        self.git_commit = git_commit()  # now, not when the run ends: the checkout may change meanwhile
        t = recipe.train
        if t.torch_threads:
            torch.set_num_threads(t.torch_threads)
        self.output_dir = Path(t.output_dir)
        self.accelerator = accelerator or make_accelerator(recipe, self.output_dir)
        acc = self.accelerator
        # Which checkpoint this run resumes, and whether its recipe allows it, is settled before any work (BC, envs)
        self.resume_from = self.checkpoint_to_resume() if t.resume else None
        self._resume_state: dict = {}  # its trainer_state.json, read once
        if self.resume_from is not None:
            self._resume_state = ckpt.load_part(self.resume_from, "trainer_state.json", lambda: json.loads(
                (self.resume_from / "trainer_state.json").read_text()))
            self._refuse_changed_recipe(self.resume_from)
            self.resume_from = self._promote_to_last(self.resume_from)
        set_seed(t.seed)  # same on every process: identical head / critic initialisation
        if base is None:
            base = build_base(recipe, acc, show_progress=t.show_progress)
        elif not isinstance(base, SteeringBase):  # a bare adapter on a built-in env
            from vla_steer.envs.processing import ActionPipeline, ObservationPipeline

            base = SteeringBase(base, ObservationPipeline(acc.device), ActionPipeline())
        self.base, self.adapter = base, base.adapter
        self.layout = recipe_layout(recipe, self.adapter)
        set_seed(t.seed)
        self.algo: SteeringAlgorithm = build_algorithm(recipe.algorithm, recipe.head, self.adapter, self.layout, acc)
        self._check_algorithm_fits()
        self.learner = Learner(recipe, self.algo, acc, sampler_seed=t.seed * 7919 + acc.process_index)
        self.env_seed = t.seed * 10_000 + acc.process_index * 1_000
        self.collector = Collector(recipe, base, self.layout, self.env_seed, self._recording_dir(),
                                   store_observations=self.algo.reencodes_observations)
        self.evaluator = Evaluator(recipe, base, self.layout, seed=t.eval_seed)

        steps_per_iteration = recipe.env.num_envs * self.adapter.n_action_steps * acc.num_processes
        self.total_iterations = math.ceil(t.total_env_steps / steps_per_iteration)
        self.warmup_iterations = math.ceil(t.warmup_env_steps / steps_per_iteration)
        self.eval_every_iterations = max(1, round(t.eval_every / steps_per_iteration))
        self.checkpoint_every_iterations = max(1, round(t.checkpoint_every / steps_per_iteration))
        self.log_every_iterations = max(1, round(t.log_every / steps_per_iteration))
        self.iteration = 0
        self.history: list[dict] = []
        self.base_metrics: dict | None = None
        self._metrics_file = None
        self._updates_pending = False
        self._last_update: dict = {}
        self._update_window: dict[str, list[float]] = {}  # update metrics since the last "update" record

    # the parts tests and scripts reach for
    @property
    def buffer(self):
        return self.learner.buffer

    @property
    def env_steps(self) -> int:
        return self.collector.env_steps

    @property
    def updates(self) -> int:
        return self.learner.updates

    def _check_algorithm_fits(self) -> None:
        if self.algo.reencodes_observations and self.recipe.offline.dataset:
            raise ValueError(
                f"offline.dataset with {self.recipe.algorithm.name} on a {type(self.adapter).__name__} base is not "
                "supported yet: its context cannot be stored and offline transitions do not keep the observations to "
                "re-encode. Train without offline data, or on a base with a storable context")

    def _recording_dir(self) -> Path | None:
        """Where this process records its rollouts (``train.record_rollouts``, always on a robot env: every episode a
        person labelled or intervened in is kept): ``rollouts`` (``rollouts_rank<r>``)."""
        if not (self.recipe.train.record_rollouts or self.recipe.env.type == ROBOT_ENV_TYPE):
            return None
        rank = self.accelerator.process_index
        return self.output_dir / ("rollouts" if rank == 0 else f"rollouts_rank{rank}")

    def load_offline_data(self) -> None:
        """Encode the offline dataset (``offline.dataset``) into the learner's second buffer."""
        source, e = self.recipe.offline.dataset, self.recipe.env
        if source == "demos":
            from vla_steer.pipeline import ensure_demos

            root = ensure_demos(self.recipe, show_progress=False)
            # the scripted demonstrations hold the env's raw rewards: given the recipe's, as the training envs do
            shaping = {"mode": e.reward_mode, "scale": e.reward_scale, "terminate_on_success": e.terminate_on_success}
        else:
            root, shaping = Path(source).expanduser(), None  # recorded rollouts already hold the recipe's rewards
        self.learner.set_offline(self.offline_transitions(root, shaping))

    def offline_transitions(self, root: Path, reward_shaping: dict | None = None) -> dict[str, torch.Tensor]:
        """A LeRobotDataset with rewards as chunk transitions, observations processed and encoded as the collector's."""
        from vla_steer.data.offline import offline_chunk_transitions

        a, observations = self.recipe.algorithm, self.base.observations
        if observations.preprocessor is None:  # built-in MLP policies read the flat state
            to_policy_batch, encode = None, lambda batch: self.adapter.encode(batch["observation.state"].to(self.accelerator.device))
        else:
            def to_policy_batch(frames):
                frames = observations.env_preprocessor(frames) if observations.env_preprocessor is not None else frames
                return observations.preprocessor(frames)
            encode = self.adapter.encode
        return offline_chunk_transitions(
            root, n_action_steps=self.adapter.n_action_steps, n_obs_steps=self.adapter.n_obs_steps, gamma=a.gamma,
            discount_mode=a.discount_mode, to_policy_batch=to_policy_batch, encode=encode,
            normalize_action=self.base.normalize_actions, latent_dim=self.layout.latent_dim,
            show_progress=self.recipe.train.show_progress and self.accelerator.is_main_process,
            reward_shaping=reward_shaping)

    def evaluate(self, mode: str = "policy") -> dict:
        return self.evaluator.evaluate(mode, self.algo)

    # ---------------------------------------------------------------------------------------------------
    def choose_latent(self, warm: bool):
        def choose(features: torch.Tensor) -> torch.Tensor:
            if warm:
                return self.algo.prior_latent(features.shape[0])
            with self.accelerator.autocast():
                return self.algo.act(features, deterministic=False).float()
        return choose

    def collect(self, warm: bool) -> None:
        a = self.recipe.algorithm
        transition = self.collector.step(self.choose_latent(warm), a.gamma, a.discount_mode)
        self.learner.add(learnable(transition, self.algo))

    # ---------------------------------------------------------------------------------------------------
    # checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints" / "last"

    def save_checkpoint(self, updates_pending: bool) -> None:
        """``updates_pending``: written after a collection step whose updates have not run yet."""
        acc = self.accelerator
        state = {"iteration": self.iteration, "updates_pending": updates_pending, "env_steps": self.env_steps,
                 "updates": self.updates, "history": self.history, "base_metrics": self.base_metrics,
                 "train_episodes": self.collector.tracker.episodes, "update_window": self._update_window,
                 "recipe": self.recipe.to_dict()}

        def write(directory: Path):
            ckpt.save_tree(directory, "algorithm", self.algo.state_dict())
            ckpt.save_tree(directory, "optimizers", self.algo.optimizer_state_dicts())
            (directory / "trainer_state.json").write_text(json.dumps(state))

        # Shared parts from the main process; per-process parts (buffer, RNG) by each process into its own file.
        staging = self.checkpoint_dir.with_name("staging")
        if acc.is_main_process:
            write_atomically(staging, write, fixed_scratch_names=True)
        acc.wait_for_everyone()
        rank = acc.process_index
        learner = self.learner.state_dict()
        ckpt.save_tree(staging, f"buffer_rank{rank}", learner["buffer"])
        ckpt.save_tree(staging, f"rng_rank{rank}", {"global": ckpt.rng_state(), "sampler": learner["sampler"]})
        acc.wait_for_everyone()
        if acc.is_main_process:
            write_atomically(self.checkpoint_dir, lambda d: [p.rename(d / p.name) for p in staging.iterdir()],
                             fixed_scratch_names=True)  # found by checkpoint_to_resume after a crash
            staging.rmdir()
        acc.wait_for_everyone()

    def checkpoint_to_resume(self) -> Path | None:
        """The newest complete checkpoint: ``last``, or, after a crash between the two renames of its atomic write,
        ``last.tmp`` (fully written before any rename) or ``last.old`` (the one before). ``None`` when there is none;
        an incomplete ``last`` with nothing to fall back on is an error, never a silent restart."""
        last = self.checkpoint_dir
        parts = ["algorithm", "optimizers"] + [f"{part}_rank{r}" for r in range(self.accelerator.num_processes)
                                               for part in ("buffer", "rng")]
        files = ["trainer_state.json"] + [f"{part}.{ext}" for part in parts for ext in ("json", "safetensors")]

        def complete(directory: Path) -> bool:  # every file: they are moved in one by one when a checkpoint is written
            return all((directory / name).is_file() for name in files)

        for candidate in (last, last.with_name(last.name + ".tmp"), last.with_name(last.name + ".old")):
            if complete(candidate):
                if candidate != last and self.accelerator.is_main_process:
                    print(f"{last} is missing or incomplete (a crash while it was written): resuming from {candidate}",
                          file=sys.stderr)
                return candidate
        if last.exists():
            raise FileNotFoundError(f"the checkpoint {last} is incomplete (no trainer_state.json or a buffer file) and no "
                                    "earlier one survives: set train.resume=false to start over, or another output_dir")
        return None

    def _promote_to_last(self, directory: Path) -> Path:
        """A fallback checkpoint (``last.tmp`` / ``last.old``) becomes ``last`` before anything else is written: the next
        checkpoint write would delete it before its own ``last`` exists, and a crash then would lose it. An
        incomplete ``last`` is kept aside as ``last.incomplete`` for inspection."""
        last = self.checkpoint_dir
        self.accelerator.wait_for_everyone()  # every process has chosen before anything is renamed
        if directory != last and self.accelerator.is_main_process:
            if last.exists():
                aside = last.with_name(last.name + ".incomplete")
                shutil.rmtree(aside, ignore_errors=True)
                last.rename(aside)
            directory.rename(last)
        self.accelerator.wait_for_everyone()
        return last

    def _refuse_changed_recipe(self, directory: Path) -> None:
        changed = ckpt.recipe_changes(self._resume_state.get("recipe", {}), self.recipe.to_dict())
        if changed:
            raise ValueError(f"the checkpoint in {directory} was trained with another recipe; these fields change the "
                             f"data or the networks and differ: {'; '.join(changed)}. Resume with the recipe it was "
                             "trained with, or start over with train.resume=false or another train.output_dir")

    def load_checkpoint(self) -> bool:
        """Restore the checkpoint chosen at construction (``train.resume``); False when there is none."""
        directory = self.resume_from
        if directory is None:
            return False
        rank = self.accelerator.process_index
        state = self._resume_state
        ckpt.load_part(directory, "algorithm.*", lambda: self.algo.load_state_dict(ckpt.load_tree(directory, "algorithm")))
        ckpt.load_part(directory, "optimizers.*", lambda: self.algo.load_optimizer_state_dicts(
            ckpt.load_optimizer_tree(directory, "optimizers")))
        rng = ckpt.load_part(directory, f"rng_rank{rank}.*", lambda: ckpt.load_tree(directory, f"rng_rank{rank}"))
        ckpt.load_part(directory, f"buffer_rank{rank}.*", lambda: self.learner.load_state_dict(
            ckpt.load_tree(directory, f"buffer_rank{rank}"), rng["sampler"]))
        self.learner.updates = state["updates"]
        ckpt.set_rng_state(rng["global"])
        self.iteration, self.collector.env_steps = state["iteration"], state["env_steps"]
        self.history, self.base_metrics = state["history"], state["base_metrics"]
        self.collector.tracker.episodes = state["train_episodes"]
        self._update_window = state.get("update_window", {})  # the window's updates before the checkpoint
        self._updates_pending = state["updates_pending"]
        return True

    # ---------------------------------------------------------------------------------------------------
    # logging
    def _trim_metrics_log(self, resumed: bool) -> None:
        """A fresh run starts a new metrics.jsonl; a resumed one drops what was logged after its checkpoint."""
        path = self.output_dir / "metrics.jsonl"
        if not path.exists():
            return
        # a checkpoint written with its iteration's updates pending precedes that iteration's update and eval records,
        # which the resumed run writes again
        last_kept = self.iteration - 1 if self._updates_pending else self.iteration
        kept = [line for line in path.read_text().splitlines()
                if resumed and line.strip() and json.loads(line).get("iteration", 0) <= last_kept]
        path.write_text("".join(line + "\n" for line in kept))

    def log(self, record: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        if self._metrics_file is None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._metrics_file = open(self.output_dir / "metrics.jsonl", "a")
        self._metrics_file.write(json.dumps(record) + "\n")
        self._metrics_file.flush()
        if self.recipe.train.log_with:
            self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record.get("env_steps"))

    def global_env_steps(self) -> int:
        acc = self.accelerator
        if acc.num_processes == 1:
            return self.env_steps
        return int(acc.reduce(torch.tensor([self.env_steps], device=acc.device), reduction="sum").item())

    def _print(self, message: str) -> None:
        if self.accelerator.is_main_process and self.recipe.train.show_progress:
            tqdm.write(message)

    # ---------------------------------------------------------------------------------------------------
    def _start(self) -> bool:
        """Resume or start fresh; evaluate the base once. Returns whether the run resumed."""
        acc, t = self.accelerator, self.recipe.train
        resumed = t.resume and self.load_checkpoint()
        if resumed and self.algo.reencodes_observations and self.buffer.storage:  # store observations as before
            self.collector.image_bytes = image_keys_stored_as_bytes(self.buffer.storage)
        if acc.is_main_process:
            self._trim_metrics_log(resumed)
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "recipe.json").write_text(json.dumps(self.recipe.to_dict(), indent=2))
            if t.log_with and not resumed:
                acc.init_trackers(self.recipe.name, config={k: str(v) for k, v in self.recipe.to_dict().items()})
        recording = self.collector.record_to
        if recording is not None and not resumed and recording.exists():  # a fresh run records afresh, keeping the old
            kept = recording.with_name(f"{recording.name}.before-{time.strftime('%Y%m%d-%H%M%S')}")
            recording.rename(kept)
            self._print(f"an earlier recording in {recording} was moved to {kept}")
        self.collector.reset(self.iteration)  # checks the env gives the base its inputs, before any evaluation
        if self.recipe.offline.dataset:
            self.load_offline_data()
            if not resumed and self.recipe.offline.pretrain_updates:
                metrics = self.learner.pretrain_critic(self.recipe.offline.pretrain_updates, t.show_progress and acc.is_main_process)
                self.log({"event": "offline_pretrain", "env_steps": 0, **{f"offline/{k}": v for k, v in metrics.items()}})
        if self.base_metrics is None:
            self.base_metrics = self.evaluate("base") if acc.is_main_process else {}
            # a masked "full" layout keeps the base's i.i.d. noise (padded dims draw their own), so only time-structured
            # layouts change what the base sees
            if self.layout.name != "full" and acc.is_main_process:
                self.base_metrics["under_latent_layout"] = self.evaluate("prior_latent")
            self.log({"event": "base_eval", "env_steps": 0, **_flat(self.base_metrics, "base")})
            self._print(f"base policy: success {self.base_metrics.get('success_rate', 0):.2f}, "
                        f"return {self.base_metrics.get('return_mean', 0):.1f}")
            if "under_latent_layout" in self.base_metrics:
                warning = layout_warning(self.layout, self.base_metrics, self.base_metrics["under_latent_layout"])
                if warning:
                    self.log({"event": "layout_warning", "env_steps": 0, "message": warning})
                    print(warning, file=sys.stderr)  # loud even without progress output
        return resumed

    def _update_and_evaluate(self, start: float, progress) -> None:
        """The updates of the iteration just collected, then its evaluation if one is due: the last evaluation scores
        the head that is saved."""
        if self.iteration >= self.warmup_iterations:
            for _ in range(self.recipe.algorithm.utd * self.recipe.env.num_envs):
                self._last_update = self.learner.update()
                for key, value in self._last_update.items():
                    self._update_window.setdefault(key, []).append(value)
        if self._update_window and (self.iteration % self.log_every_iterations == 0
                                    or self.iteration == self.total_iterations):
            self._log_update_window()
        if self.iteration % self.eval_every_iterations == 0 or self.iteration == self.total_iterations:
            self._evaluate_progress(start, self._last_update, progress)

    def _log_update_window(self) -> None:
        """One "update" record: the mean of every update metric over the window (LP-DS: multiplier, E||Delta||^2,
        constraint violation; SAC: temperature, entropy; critic losses and Q), so they are seen between evaluations."""
        window, self._update_window = self._update_window, {}
        self.log({"event": "update", "env_steps": self.global_env_steps(), "iteration": self.iteration, "updates": self.updates,
                  "window_updates": len(next(iter(window.values()))),
                  **{f"train/{key}": sum(values) / len(values) for key, values in window.items()}})

    def _evaluate_progress(self, start: float, last: dict, progress) -> None:
        env_steps = self.global_env_steps()
        if self.accelerator.is_main_process:
            record = {"env_steps": env_steps, "iteration": self.iteration, "updates": self.updates,
                      "wall_time": time.time() - start, **self.evaluate("policy"),
                      **_recent(self.collector.tracker.episodes), **{f"train/{k}": v for k, v in last.items()}}
            self.history.append(record)
            self.log({"event": "eval", **record})
            progress.set_postfix(success=f"{record['success_rate']:.2f}", ret=f"{record['return_mean']:.1f}")
        self.accelerator.wait_for_everyone()

    def run(self) -> dict:
        acc, t = self.accelerator, self.recipe.train
        start = time.time()
        resumed = self._start()
        progress = tqdm(total=self.total_iterations, initial=self.iteration, desc=f"{self.recipe.algorithm.name}",
                        disable=not (t.show_progress and acc.is_main_process), unit="it")
        if resumed and self._updates_pending:
            # the checkpoint was written after a collection step and before its updates: run those first
            self._update_and_evaluate(start, progress)
        while self.iteration < self.total_iterations:
            try:
                self.collect(warm=self.iteration < self.warmup_iterations)
            except StopRequested as stop:  # e-stop / watchdog: nothing more is sent; keep every completed iteration
                self.save_checkpoint(updates_pending=False)
                self.collector.close()
                raise type(stop)(f"{stop} The run is checkpointed at env step {self.env_steps}: run the same command "
                                 "to resume.") from None
            self.iteration += 1
            progress.update(1)
            if self.iteration % self.checkpoint_every_iterations == 0 and self.iteration < self.total_iterations:
                self.save_checkpoint(updates_pending=True)
            self._update_and_evaluate(start, progress)
        progress.close()
        self.save_checkpoint(updates_pending=False)
        self.collector.close()
        results = export_run(self, time.time() - start) if acc.is_main_process else {}
        acc.wait_for_everyone()
        if t.log_with:
            acc.end_training()
        return results


def learnable(transition: dict[str, torch.Tensor], algo: SteeringAlgorithm) -> dict[str, torch.Tensor]:
    """The rows of ``transition`` ``algo`` can learn from. A chunk a person intervened in ran their actions, not the
    latent's: critics of (state, action) pairs learn from it (DSRL-NA, LP-DS with ``critic: action``), a critic of
    (state, latent) pairs would learn a wrong value for that latent, so DSRL-SAC and LP-DS with ``critic: latent``
    leave it out of the replay buffer (it is still recorded, flagged, in the rollouts dataset)."""
    if "intervention" not in transition or algo.learns_from_executed_actions:
        return transition
    keep = transition["intervention"] == 0
    return {key: value[keep] for key, value in transition.items()}


def _flat(metrics: dict, prefix: str) -> dict:
    """``{"prefix/key": number}``, nested dicts (the base under the latent layout) as ``prefix/inner/key``."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}/{key}"))
        elif isinstance(value, (int, float)):
            flat[f"{prefix}/{key}"] = value
    return flat


def _recent(episodes: dict, n: int = 20) -> dict:
    if not episodes["return"]:
        return {}
    import numpy as np

    return {"train/return": float(np.mean(episodes["return"][-n:])), "train/success_rate": float(np.mean(episodes["success"][-n:]))}
