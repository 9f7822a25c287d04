"""The steering trainer: rollouts with action chunks, replay, updates, evaluation and exact resume.

One loop iteration = one *vectorised chunk step*: every env executes ``n_action_steps`` actions decoded
from the head's latent, the transition goes to the replay buffer, and the algorithm runs
``utd * num_envs`` updates. A checkpoint is written between the env step and the updates, so a resumed
run's next update is bit-identical to the uninterrupted run's (envs are reset on resume: the episode in
progress at the checkpoint is lost, the transitions already collected are not).

Under ``accelerate launch`` every process steps its own envs (seeded apart) and keeps its own buffer;
gradients are averaged across processes, so the head stays identical everywhere.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from vla_steer.adapters.base import LatentLayout, SteerableAdapter
from vla_steer.algorithms import SteeringAlgorithm, build_algorithm
from vla_steer.config import Recipe
from vla_steer.envs.registry import make_env
from vla_steer.metrics import kozachenko_leonenko_entropy, summarize_episodes
from vla_steer.training import checkpoint as ckpt
from vla_steer.steering.best_of_k import best_of_k, latent_critic
from vla_steer.training.buffer import ReplayBuffer


class NonFiniteError(RuntimeError):
    """An environment produced NaN / inf; raised before the value can reach the replay buffer."""


def check_finite(name: str, value, step: int) -> None:
    if isinstance(value, dict):  # dict observations (images, state, task text): every numeric entry
        for key, entry in value.items():
            if np.asarray(entry).dtype.kind in "fiub":
                check_finite(f"{name} {key!r}", entry, step)
        return
    bad = ~np.isfinite(np.asarray(value, dtype=np.float64))
    if bad.any():
        envs = sorted(set(np.nonzero(bad)[0].tolist()))
        raise NonFiniteError(
            f"{name} from env(s) {envs} is not finite (NaN/inf) at env step {step}; training stopped so the "
            "replay buffer is not poisoned. Check the simulator (unstable physics, bad action scaling) or wrap "
            "the env to sanitise its output."
        )


def with_final_observations(next_obs, info: dict, done: np.ndarray):
    """The true next observation of every env: SAME_STEP autoreset puts a finished episode's last one in
    ``info["final_obs"]`` (per env; a dict per env for dict observation spaces)."""
    if not done.any():
        return next_obs
    finished = np.nonzero(done)[0]
    if isinstance(next_obs, dict):
        stored = {key: np.array(value, copy=True) for key, value in next_obs.items()}
        for i in finished:
            for key in stored:
                stored[key][i] = info["final_obs"][i][key]
        return stored
    stored = next_obs.copy()
    for i in finished:
        stored[i] = info["final_obs"][i]
    return stored


def step_info(info: dict, done: np.ndarray, key: str) -> np.ndarray:
    """Per-env value of ``key`` from a SAME_STEP-autoreset vector info: finished envs report it in ``final_info``."""
    values = np.zeros(len(done), dtype=np.float64)
    for source, rows in ((info, ~done), (info.get("final_info", {}), done)):
        if key in source:
            present = np.asarray(source.get(f"_{key}", np.ones(len(done), bool)), bool) & rows
            values[present] = np.asarray(source[key], dtype=np.float64)[present]
    return values


def make_vector_env(recipe: Recipe, num_envs: int, seed: int, n_action_steps: int) -> gym.vector.VectorEnv:
    e = recipe.env

    def factory(i):
        return lambda: make_env(e.id, seed=seed + i, max_episode_steps=e.max_episode_steps, reward_mode=e.reward_mode,
                                terminate_on_success=e.terminate_on_success, reward_scale=e.reward_scale,
                                chunk_steps=n_action_steps, kwargs=e.kwargs, **e.observation_kwargs())

    cls = gym.vector.AsyncVectorEnv if e.vectorization == "async" else gym.vector.SyncVectorEnv
    return cls([factory(i) for i in range(num_envs)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


class SteeringTrainer:
    def __init__(self, recipe: Recipe, adapter: SteerableAdapter | None = None, accelerator: Accelerator | None = None):
        self.recipe = recipe
        t = recipe.train
        if t.torch_threads:
            torch.set_num_threads(t.torch_threads)
        self.output_dir = Path(t.output_dir)
        # cpu=True only when no GPU exists: it is what lets torchrun-launched CPU processes form a gloo group
        self.accelerator = accelerator or Accelerator(
            cpu=not torch.cuda.is_available(), mixed_precision=t.mixed_precision, log_with=t.log_with or None, project_dir=str(self.output_dir))
        acc = self.accelerator
        set_seed(t.seed)  # same on every process: identical head / critic initialisation
        if adapter is None:
            from vla_steer.pipeline import build_adapter

            adapter = build_adapter(recipe, acc, show_progress=t.show_progress)
        self.adapter = adapter
        self.layout = LatentLayout(recipe.head.latent_layout, adapter.noise_shape)
        set_seed(t.seed)
        self.algo: SteeringAlgorithm = build_algorithm(recipe.algorithm, recipe.head, adapter, self.layout, acc)
        self.buffer = ReplayBuffer(recipe.train.buffer_size, device=acc.device)
        self.env_seed = t.seed * 10_000 + acc.process_index * 1_000
        self.envs = make_vector_env(recipe, recipe.env.num_envs, self.env_seed, adapter.n_action_steps)
        self.sample_generator = torch.Generator().manual_seed(t.seed * 7919 + acc.process_index)

        steps_per_iteration = recipe.env.num_envs * adapter.n_action_steps * acc.num_processes
        self.total_iterations = math.ceil(t.total_env_steps / steps_per_iteration)
        self.warmup_iterations = math.ceil(t.warmup_env_steps / steps_per_iteration)
        self.eval_every_iterations = max(1, round(t.eval_every / steps_per_iteration))
        self.checkpoint_every_iterations = max(1, round(t.checkpoint_every / steps_per_iteration))
        self.iteration = 0
        self.env_steps = 0  # this process's env steps actually executed
        self.updates = 0
        self.history: list[dict] = []
        self.base_metrics: dict | None = None
        self.train_episodes = {"return": [], "success": [], "length": []}
        self._metrics_file = None

    # ---------------------------------------------------------------------------------------------------
    # acting
    def _obs_tensor(self, obs):
        """Env observations as the adapter's input: a float tensor, or for dict observations a dict of tensors
        (numeric entries on the device; text such as a language instruction passed through as a list)."""
        device = self.accelerator.device
        if isinstance(obs, dict):
            return {key: torch.as_tensor(value, device=device) if np.asarray(value).dtype.kind in "fiub" else list(value)
                    for key, value in obs.items()}
        return torch.as_tensor(obs, dtype=torch.float32, device=device)

    def _choose_latent(self, features: torch.Tensor, mode: str) -> torch.Tensor:
        if mode == "prior":
            return self.algo.prior_latent(features.shape[0])
        with self.accelerator.autocast():
            return self.algo.act(features, deterministic=(mode == "deterministic")).float()

    def _best_of_k(self, context, deterministic_proposals: bool = False):
        """``(latent, executed actions)`` chosen by the critic out of ``train.eval_best_of_k`` head proposals."""
        latent, actions = best_of_k(self.algo, self.adapter, self.layout, context, self.recipe.train.eval_best_of_k,
                                    deterministic_proposals)
        return latent, self._decode(context, latent) if actions is None else actions[:, : self.adapter.n_action_steps]

    def _decode(self, context, latent=None, noise=None) -> torch.Tensor:
        noise = self.layout.to_noise(latent) if noise is None else noise
        return self.adapter.decode(context, noise)[:, : self.adapter.n_action_steps]

    # ---------------------------------------------------------------------------------------------------
    # one vectorised chunk step of data collection
    def collect(self, obs: np.ndarray, context, mode: str):
        latent = self._choose_latent(context.features, mode)
        actions = self._decode(context, latent)
        next_obs, reward, terminated, truncated, info = self.envs.step(actions.cpu().numpy())
        check_finite("reward", reward, self.env_steps)
        check_finite("observation", next_obs, self.env_steps)
        done = terminated | truncated
        chunk_steps = step_info(info, done, "chunk_steps").astype(int)
        self.env_steps += int(chunk_steps.sum())

        stored_next = with_final_observations(next_obs, info, done)
        if done.any():
            check_finite("final observation", stored_next, self.env_steps)
        next_context = self.adapter.encode(self._obs_tensor(stored_next))
        a = self.recipe.algorithm
        discount = a.gamma ** chunk_steps if a.discount_mode == "env_step" else np.full(len(done), a.gamma)
        transition = {
            "features": context.features, "latent": latent, "action": actions.flatten(1),
            "reward": torch.as_tensor(reward, dtype=torch.float32), "discount": torch.as_tensor(discount, dtype=torch.float32),
            "terminated": torch.as_tensor(terminated, dtype=torch.float32), "next_features": next_context.features,
        }
        if context.storable:
            transition["decode_state"] = context.decode_state
            transition["next_decode_state"] = next_context.decode_state
        self.buffer.add(transition)
        self._track_train_episodes(reward, done, chunk_steps, step_info(info, done, "is_success") > 0)
        # the context to act from next: reuse the encode unless an episode restarted
        acting_context = self.adapter.encode(self._obs_tensor(next_obs)) if done.any() else next_context
        return next_obs, acting_context

    def _track_train_episodes(self, reward, done, chunk_steps, success):
        n = len(reward)
        if not hasattr(self, "_ep_return"):
            self._ep_return, self._ep_len, self._ep_success = np.zeros(n), np.zeros(n, int), np.zeros(n, bool)
        self._ep_return += reward
        self._ep_len += chunk_steps
        self._ep_success |= success
        for i in np.nonzero(done)[0]:
            self.train_episodes["return"].append(float(self._ep_return[i]))
            self.train_episodes["success"].append(bool(self._ep_success[i]))
            self.train_episodes["length"].append(int(self._ep_len[i]))
            self._ep_return[i], self._ep_len[i], self._ep_success[i] = 0.0, 0, False

    # ---------------------------------------------------------------------------------------------------
    # evaluation
    def evaluate(self, mode: str = "policy") -> dict:
        """Evaluate without touching the training RNG streams (so evaluating never changes training)."""
        devices = [self.accelerator.device] if self.accelerator.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(12345)
            return self._evaluate(mode)

    def _evaluate(self, mode: str) -> dict:
        """Run ``eval_episodes`` episodes on separate envs. ``mode``: ``policy`` (the steered head), ``base``
        (the frozen policy with its own i.i.d. N(0, I) noise) or ``prior_latent`` (prior noise through the latent
        layout, i.e. the base under a tiled latent)."""
        t = self.recipe.train
        n_envs = min(t.eval_num_envs, t.eval_episodes)
        quota = np.array([t.eval_episodes // n_envs + (i < t.eval_episodes % n_envs) for i in range(n_envs)])
        envs = make_vector_env(self.recipe, n_envs, 1_000_000, self.adapter.n_action_steps)
        obs, _ = envs.reset(seed=[1_000_000 + i for i in range(n_envs)])  # same start states for every evaluation
        ep_return, ep_len, ep_success = np.zeros(n_envs), np.zeros(n_envs, int), np.zeros(n_envs, bool)
        returns, successes, lengths, finished = [], [], [], np.zeros(n_envs, int)
        entropy_contexts, latent_norms, extra = [], [], []
        while (finished < quota).any():
            context = self.adapter.encode(self._obs_tensor(obs))
            if len(entropy_contexts) * n_envs < t.entropy_states:
                entropy_contexts.append(context)
            if mode == "base":
                noise = self.adapter.sample_prior_noise(n_envs)
                actions = self._decode(context, noise=noise)
                latent_norms.append(noise.flatten(1).norm(dim=-1))
            elif mode == "policy" and t.eval_best_of_k > 1:
                latent, actions = self._best_of_k(context, t.eval_deterministic)
                latent_norms.append(self.layout.to_noise(latent).flatten(1).norm(dim=-1))
            else:
                latent = self.algo.prior_latent(n_envs) if mode == "prior_latent" else self._choose_latent(
                    context.features, "deterministic" if t.eval_deterministic else "stochastic")
                actions = self._decode(context, latent)
                latent_norms.append(self.layout.to_noise(latent).flatten(1).norm(dim=-1))
                if hasattr(self.algo, "delta_net") and mode == "policy":
                    extra.append(self.algo.delta_net(context.features).norm(dim=-1))
            obs, reward, terminated, truncated, info = envs.step(actions.cpu().numpy())
            active, done = finished < quota, terminated | truncated
            ep_return += reward * active
            ep_len += step_info(info, done, "chunk_steps").astype(int) * active
            ep_success |= (step_info(info, done, "is_success") > 0) & active
            for i in np.nonzero(done & active)[0]:
                returns.append(float(ep_return[i])); successes.append(bool(ep_success[i])); lengths.append(int(ep_len[i]))
                finished[i] += 1
                ep_return[i], ep_len[i], ep_success[i] = 0.0, 0, False
        envs.close()
        metrics = summarize_episodes(returns, successes, lengths)
        metrics["action_entropy"] = self._action_entropy(entropy_contexts, mode)
        metrics["noise_norm"] = float(torch.cat(latent_norms).mean())
        if extra:
            metrics["delta_norm"] = float(torch.cat(extra).mean())
        return metrics

    def _action_entropy(self, contexts, mode: str) -> float:
        """Mean k-NN entropy of the executed action chunk over K draws per state: each context is encoded once
        and repeated K times (works for contexts that cannot be concatenated, such as VLA KV caches)."""
        t = self.recipe.train
        per_state, remaining = [], t.entropy_states
        for context in contexts:
            repeated = self.adapter.repeat_context(context, t.entropy_draws)
            draws = context.batch_size * t.entropy_draws
            if mode == "base":
                actions = self._decode(repeated, noise=self.adapter.sample_prior_noise(draws))
            elif mode == "policy" and t.eval_best_of_k > 1:  # the entropy of what best-of-K executes
                latent, actions = self._best_of_k(repeated)
            else:
                latent = self.algo.prior_latent(draws) if mode == "prior_latent" else self._choose_latent(repeated.features, "stochastic")
                actions = self._decode(repeated, latent)
            samples = actions.flatten(1).reshape(context.batch_size, t.entropy_draws, -1).float()[:remaining]
            per_state.append(kozachenko_leonenko_entropy(samples, k=3))
            remaining -= samples.shape[0]
            if remaining <= 0:
                break
        return float(torch.cat(per_state).mean())

    # ---------------------------------------------------------------------------------------------------
    # checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints" / "last"

    def save_checkpoint(self, updates_pending: bool) -> None:
        """``updates_pending``: written after a collection step whose updates have not run yet."""
        acc = self.accelerator
        state = {"iteration": self.iteration, "updates_pending": updates_pending, "env_steps": self.env_steps, "updates": self.updates,
                 "history": self.history, "base_metrics": self.base_metrics, "train_episodes": self.train_episodes,
                 "recipe": self.recipe.to_dict()}

        def write(directory: Path):
            ckpt.save_tree(directory, "algorithm", self.algo.state_dict())
            ckpt.save_tree(directory, "optimizers", self.algo.optimizer_state_dicts())
            (directory / "trainer_state.json").write_text(json.dumps(state))

        # Shared parts from the main process; per-process parts (buffer, RNG) by each process into its own file.
        if acc.is_main_process:
            ckpt.write_atomically(self.checkpoint_dir.with_name("staging"), write)
        acc.wait_for_everyone()
        staging = self.checkpoint_dir.with_name("staging")
        rank = acc.process_index
        ckpt.save_tree(staging, f"buffer_rank{rank}", self.buffer.state_dict())
        ckpt.save_tree(staging, f"rng_rank{rank}", {"global": ckpt.rng_state(), "sampler": self.sample_generator.get_state()})
        acc.wait_for_everyone()
        if acc.is_main_process:
            ckpt.write_atomically(self.checkpoint_dir, lambda d: [p.rename(d / p.name) for p in staging.iterdir()])
            staging.rmdir()
        acc.wait_for_everyone()

    def load_checkpoint(self) -> bool:
        directory = self.checkpoint_dir
        if not (directory / "trainer_state.json").is_file():
            return False
        rank = self.accelerator.process_index
        state = json.loads((directory / "trainer_state.json").read_text())
        saved_algorithm = state["recipe"]["algorithm"]
        if saved_algorithm != asdict(self.recipe.algorithm):
            raise ValueError(f"checkpoint in {directory} was trained with a different algorithm config; "
                             "use another train.output_dir or train.resume=false")
        self.algo.load_state_dict(ckpt.load_tree(directory, "algorithm"))
        self.algo.load_optimizer_state_dicts(ckpt.load_optimizer_tree(directory, "optimizers"))
        self.buffer.load_state_dict(ckpt.load_tree(directory, f"buffer_rank{rank}"))
        rng = ckpt.load_tree(directory, f"rng_rank{rank}")
        ckpt.set_rng_state(rng["global"])
        self.sample_generator.set_state(rng["sampler"].to(torch.uint8))
        self.iteration, self.env_steps, self.updates = state["iteration"], state["env_steps"], state["updates"]
        self.history, self.base_metrics, self.train_episodes = state["history"], state["base_metrics"], state["train_episodes"]
        self._updates_pending = state["updates_pending"]
        return True

    # ---------------------------------------------------------------------------------------------------
    # logging
    def _trim_metrics_log(self, resumed: bool) -> None:
        """A fresh run starts a new metrics.jsonl; a resumed one drops what was logged after its checkpoint."""
        path = self.output_dir / "metrics.jsonl"
        if not path.exists():
            return
        kept = [line for line in path.read_text().splitlines()
                if resumed and line.strip() and json.loads(line).get("iteration", 0) <= self.iteration]
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

    # ---------------------------------------------------------------------------------------------------
    def update_step(self) -> dict:
        a = self.recipe.algorithm
        batch = self.buffer.sample(a.batch_size, self.sample_generator, device=self.accelerator.device)
        with self.accelerator.autocast():
            metrics = self.algo.update(batch)
        self.updates += 1
        return metrics

    def run(self) -> dict:
        acc, t = self.accelerator, self.recipe.train
        start = time.time()
        resumed = t.resume and self.load_checkpoint()
        if acc.is_main_process:
            self._trim_metrics_log(resumed)
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "recipe.json").write_text(json.dumps(self.recipe.to_dict(), indent=2))
            if t.log_with and not resumed:
                acc.init_trackers(self.recipe.name, config={k: str(v) for k, v in self.recipe.to_dict().items()})
        if self.base_metrics is None:
            self.base_metrics = self.evaluate("base") if acc.is_main_process else {}
            if self.layout.name != "full" and acc.is_main_process:
                self.base_metrics["under_latent_layout"] = self.evaluate("prior_latent")
            self.log({"event": "base_eval", "env_steps": 0, **_flat(self.base_metrics, "base")})
            self._print(f"base policy: success {self.base_metrics.get('success_rate', 0):.2f}, "
                        f"return {self.base_metrics.get('return_mean', 0):.1f}")

        obs, _ = self.envs.reset(seed=[self.env_seed + self.iteration * 100 + i for i in range(self.recipe.env.num_envs)])
        context = self.adapter.encode(self._obs_tensor(obs))
        if self.algo.needs_stored_decode_state and not context.storable:
            raise ValueError(
                f"{self.recipe.algorithm.name} decodes actions from replay-buffer contexts, but the "
                f"{type(self.adapter).__name__} context (a VLM KV cache) is too large to store: use "
                "algorithm.name: dsrl_sac, or lpds with algorithm.critic: latent")
        updates_per_iteration = self.recipe.algorithm.utd * self.recipe.env.num_envs
        progress = tqdm(total=self.total_iterations, initial=self.iteration, desc=f"{self.recipe.algorithm.name}",
                        disable=not (t.show_progress and acc.is_main_process), unit="it")
        last = {}
        if resumed and self._updates_pending and self.iteration >= self.warmup_iterations:
            # the checkpoint was written after a collection step and before its updates: run those first
            for _ in range(updates_per_iteration):
                last = self.update_step()
        while self.iteration < self.total_iterations:
            warm = self.iteration < self.warmup_iterations
            obs, context = self.collect(obs, context, "prior" if warm else "stochastic")
            self.iteration += 1
            progress.update(1)
            final = self.iteration == self.total_iterations
            if self.iteration % self.eval_every_iterations == 0 or final:
                env_steps = self.global_env_steps()
                if acc.is_main_process:
                    record = {"env_steps": env_steps, "iteration": self.iteration, "updates": self.updates,
                              "wall_time": time.time() - start, **self.evaluate("policy"), **_recent(self.train_episodes),
                              **{f"train/{k}": v for k, v in last.items()}}
                    self.history.append(record)
                    self.log({"event": "eval", **record})
                    progress.set_postfix(success=f"{record['success_rate']:.2f}", ret=f"{record['return_mean']:.1f}")
                acc.wait_for_everyone()
            if self.iteration % self.checkpoint_every_iterations == 0 and not final:
                self.save_checkpoint(updates_pending=True)
            if self.iteration >= self.warmup_iterations:
                for _ in range(updates_per_iteration):
                    last = self.update_step()
        progress.close()
        self.envs.close()
        results = self.finish(time.time() - start)
        if t.log_with:
            acc.end_training()
        return results

    def finish(self, wall_time: float) -> dict:
        acc = self.accelerator
        self.save_checkpoint(updates_pending=False)
        results = {}
        if acc.is_main_process:
            from vla_steer.training.plots import plot_learning_curve

            results = {
                "recipe": self.recipe.name, "task": self.recipe.env.id, "method": self.recipe.algorithm.name,
                "seed": self.recipe.train.seed, "env_steps": self.history[-1]["env_steps"] if self.history else 0,
                "updates": self.updates, "num_processes": acc.num_processes, "wall_time_s": wall_time,
                "base": self.base_metrics, "final": self.history[-1] if self.history else {}, "history": self.history,
                "config": self.recipe.to_dict(), "versions": _versions(),
            }
            (self.output_dir / "results.json").write_text(json.dumps(results, indent=2))
            results["plot"] = str(plot_learning_curve(results, self.output_dir / "learning_curve.png"))
            self.save_head()
        acc.wait_for_everyone()
        return results

    def save_head(self) -> Path:
        """The trained head's weights (safetensors) and what it was trained on (JSON)."""
        from safetensors.torch import save_file

        from vla_steer.hub.fingerprint import base_fingerprint

        directory = self.output_dir / "head"
        directory.mkdir(parents=True, exist_ok=True)
        # the acting modules, plus the latent critic Q^W(s, z) for best-of-K selection in a deployed policy
        modules = {**self.algo.head_modules(), "critic": latent_critic(self.algo)}
        tensors = {f"{name}.{k}": v.detach().cpu().contiguous()
                   for name, module in modules.items() for k, v in module.state_dict().items()}
        save_file(tensors, directory / "head.safetensors")
        (directory / "head_config.json").write_text(json.dumps({"critic": "latent",
            "algorithm": self.recipe.algorithm.name, "head": asdict(self.recipe.head), "noise_shape": list(self.adapter.noise_shape),
            "latent_shape": list(self.layout.latent_shape), "feature_dim": self.adapter.feature_dim,
            "adapter": self.adapter.family, "env": self.recipe.env.id,
            "base_fingerprint": base_fingerprint(self.adapter)}, indent=2))  # which base it was trained on (hub/FORMAT.md)
        return directory

    def _print(self, message: str) -> None:
        if self.accelerator.is_main_process and self.recipe.train.show_progress:
            tqdm.write(message)


def _flat(metrics: dict, prefix: str) -> dict:
    return {f"{prefix}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}


def _recent(episodes: dict, n: int = 20) -> dict:
    if not episodes["return"]:
        return {}
    return {"train/return": float(np.mean(episodes["return"][-n:])), "train/success_rate": float(np.mean(episodes["success"][-n:]))}


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("vla_steer", "torch", "lerobot", "mujoco", "metaworld", "gymnasium", "gymnasium-robotics", "accelerate"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
