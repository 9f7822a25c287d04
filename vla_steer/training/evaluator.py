"""The evaluator: fixed evaluation start states, base vs. steered, success / return / action entropy / drift.

Evaluation runs on its own envs seeded from ``train.eval_seed`` (default ``EVAL_SEED``; disjoint from every training
seed: training env seeds are ``seed * 10_000 + process * 1_000 + i``, far below it) and on its own RNG stream seeded
from the same number, so base and steered policies see the same start states and prior draws, another evaluation
seed gives other ones (benchmarks/PROTOCOL.md), and evaluating never changes training.
"""

from __future__ import annotations

import numpy as np
import torch

from vla_steer.adapters.base import LatentLayout
from vla_steer.config import Recipe
from vla_steer.metrics import energy_distance, kozachenko_leonenko_entropy, summarize_episodes
from vla_steer.steering.best_of_k import best_of_k
from vla_steer.envs.registry import task_ids
from vla_steer.training.collector import Collector, EpisodeTracker, env_task_index, step_info

EVAL_SEED = 1_000_000


class Evaluator:
    """Evaluates the frozen base, or the base steered by an algorithm's head, on ``train.eval_episodes`` episodes.

    Modes: ``base`` (the base with its own i.i.d. N(0, I) noise), ``policy`` (the head; best-of-K when
    ``train.eval_best_of_k > 1``) and ``prior_latent`` (prior latents, clipped to ``head.bound`` as every method's are,
    through the latent layout: the base under a tiled or interpolated latent; no head needed).
    """

    def __init__(self, recipe: Recipe, base, layout: LatentLayout, seed: int = EVAL_SEED):
        self.recipe, self.base, self.adapter, self.layout = recipe, base, base.adapter, layout
        self.seed = seed

    def evaluate(self, mode: str = "policy", algo=None) -> dict:
        if mode == "policy" and algo is None:
            raise ValueError(f"evaluation mode {mode!r} needs the algorithm whose head acts")
        devices = [self.adapter.device] if self.adapter.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(self.seed)  # the prior draws follow the evaluation seed, like the start states
            return self._evaluate(mode, algo)

    def _latent(self, algo, features: torch.Tensor, mode: str, deterministic: bool) -> torch.Tensor:
        if mode == "prior_latent":
            bound = self.recipe.head.bound
            return torch.randn(features.shape[0], self.layout.latent_dim, device=features.device).clamp(-bound, bound)
        return algo.act(features, deterministic=deterministic).float()

    def _act(self, collector: Collector, context, mode: str, algo, deterministic: bool):
        """``(env actions, norm of the noise)`` for one batch of contexts."""
        t = self.recipe.train
        if mode == "base":
            noise = self.adapter.sample_prior_noise(context.batch_size)
            actions = self.adapter.decode(context, noise)
        elif mode == "policy" and t.eval_best_of_k > 1:
            latent, actions = best_of_k(algo, self.adapter, self.layout, context, t.eval_best_of_k, deterministic)
            noise = self.layout.to_noise(latent)
            if actions is None:
                actions = self.adapter.decode(context, noise)
        else:
            noise = self.layout.to_noise(self._latent(algo, context.features, mode, deterministic))
            actions = self.adapter.decode(context, noise)
        return collector.base.actions(actions).cpu().numpy(), noise.flatten(1).norm(dim=-1)

    def _evaluate(self, mode: str, algo) -> dict:
        t = self.recipe.train
        n_envs = min(t.eval_num_envs, t.eval_episodes)
        quota = np.array([t.eval_episodes // n_envs + (i < t.eval_episodes % n_envs) for i in range(n_envs)])
        eval_recipe = _with_num_envs(self.recipe, n_envs)
        collector = Collector(eval_recipe, self.base, self.layout, seed=self.seed, with_teleop=False)  # the head alone
        obs, _ = collector.envs.reset(seed=[self.seed + i for i in range(n_envs)])  # same start states every time
        tracker, finished, episode_envs = EpisodeTracker(n_envs), np.zeros(n_envs, int), []
        entropy_contexts, latent_norms, delta_norms = [], [], []
        while (finished < quota).any():
            context = collector.encode(obs)
            if len(entropy_contexts) * n_envs < t.entropy_states:
                entropy_contexts.append(context)
            env_actions, norm = self._act(collector, context, mode, algo, t.eval_deterministic)
            latent_norms.append(norm)
            if mode == "policy" and hasattr(algo, "delta_net"):
                delta_norms.append(algo.delta_net(context.features).norm(dim=-1))
            obs, reward, terminated, truncated, info = collector.envs.step(env_actions)
            done = terminated | truncated
            ended = tracker.update(reward, done, step_info(info, done, "chunk_steps").astype(int),
                                   step_info(info, done, "is_success") > 0, active=finished < quota)
            finished[ended] += 1
            episode_envs += ended.tolist()  # the tracker appends episodes in this order
        collector.close()
        e = tracker.episodes
        metrics = summarize_episodes(e["return"], e["success"], e["length"])
        if len(tasks := self._tasks()) > 1 and self.recipe.env.only_task is None:
            task_of = np.array([env_task_index(self.recipe, i) % len(tasks) for i in episode_envs])
            metrics["per_task"] = {tasks[k]: summarize_episodes(*(np.asarray(e[key])[task_of == k] for key in
                                                                  ("return", "success", "length")))
                                   for k in range(len(tasks)) if (task_of == k).any()}
        metrics["action_entropy"], drift = self._action_entropy(entropy_contexts, mode, algo, collector)
        if drift is not None:
            metrics["action_drift"] = drift
        metrics["noise_norm"] = float(torch.cat(latent_norms).mean())
        if delta_norms:
            metrics["delta_norm"] = float(torch.cat(delta_norms).mean())
        return metrics

    def _tasks(self) -> list[str]:
        """The tasks of a built-in task set (``env.id: a+b+c``), one entry for a single env or a LeRobot env."""
        return task_ids(self.recipe.env.id) if self.recipe.env.type is None else [self.recipe.env.type]

    def _action_entropy(self, contexts, mode: str, algo, collector: Collector) -> tuple[float, float | None]:
        """``(entropy, drift)`` of the executed env actions over K draws per state: the mean k-NN entropy, and (not
        for the base itself) the mean energy distance between these draws and K draws of the base on the same
        states: how far steering moved the action distribution. Each context is encoded once and repeated K
        times (works for contexts that cannot be concatenated, such as VLA KV caches)."""
        t = self.recipe.train
        entropies, drifts, remaining = [], [], t.entropy_states

        def draws(repeated, draw_mode: str, n: int) -> torch.Tensor:
            # stochastic draws even when evaluation acts deterministically; best-of-K: what it executes
            actions = torch.as_tensor(self._act(collector, repeated, draw_mode, algo, deterministic=False)[0])
            return actions.flatten(1).reshape(n, t.entropy_draws, -1).float()[:remaining]

        for context in contexts:
            repeated = self.adapter.repeat_context(context, t.entropy_draws)
            samples = draws(repeated, mode, context.batch_size)
            entropies.append(kozachenko_leonenko_entropy(samples, k=3))
            if mode != "base":
                drifts.append(energy_distance(samples, draws(repeated, "base", context.batch_size)))
            remaining -= samples.shape[0]
            if remaining <= 0:
                break
        return float(torch.cat(entropies).mean()), float(torch.cat(drifts).mean()) if drifts else None


def _with_num_envs(recipe: Recipe, num_envs: int) -> Recipe:
    import dataclasses

    return dataclasses.replace(recipe, env=dataclasses.replace(recipe.env, num_envs=num_envs))
