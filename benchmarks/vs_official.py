"""DSRL-SAC as vla-steer runs it against the official DSRL code's design, side by side in one process, one thread.

The official design (github.com/ajwagen/dsrl, ``DiffusionPolicyEnvWrapper``) is Stable-Baselines3's SAC around a
vector-env wrapper whose action is the base policy's initial noise: it decodes every env's noise in one batch with the
frozen base and executes the chunks. (Its double-decode bug, DSRL issue #6, is not reproduced.)
Here both learners get the same task, base, vectorised envs, UTD, batch size, network widths, warm-up and env-step
budget, and both are scored by the same evaluator (vla_steer's, on the same start states) every ``--eval-every`` env
steps. Reported per seed: env steps/s and updates/s while training (evaluation time excluded), and the training
wall time and env steps until the evaluated success first reaches ``--target`` and until the mean of 3 consecutive
evaluations does (:func:`summarize`); the designs run one after another, so on a shared machine the seconds carry
its load and the env steps do not.

    python benchmarks/vs_official.py recipes/metaworld_push_dsrl_sac.yaml --seeds 0 1 2 --target 0.5
    python benchmarks/vs_official.py recipes/metaworld_push_dsrl_sac.yaml --rules own --seeds 0 1 2 --target 0.5

``--rules matched`` (the default) gives vla_steer SB3's learning rules, so only the implementation differs;
``--rules own`` lets vla_steer keep the recipe's own rules (what a user of the recipe gets: no entropy term in the
TD backup, the actor on the mean over critics, the recipe's entropy target) while everything the comparison fixes
stays equal: task, base, envs, UTD, batch, widths, learning rates, warm-up and env steps.

With ``--rules matched``: one learning rate for actor, critic and temperature (SB3 has one; the recipe must agree), the
actor maximising the min over critics (SB3's rule; ``algorithm.actor_reduction=min``), and the entropy target.
SB3 measures entropy on the squashed action in [-1, 1] and targets 0; vla_steer measures it on the latent
``bound * tanh(u)``, which adds ``log(bound)`` per dimension, so vla_steer gets ``latent_dim * log(bound)``.
Known differences, kept because they are the official design's: SB3's MLPs have no LayerNorm (vla_steer's critics
do); SB3's warm-up draws uniform latents in the box, vla_steer's the prior N(0, I), clipped; SB3 starts learning one
vector step later (``num_timesteps > learning_starts``) and its evaluation callback runs before that step's updates.
The SB3 learner observes the features the vla_steer head reads (the base's normalised observation). Throughput is
counted up to the last evaluation (steps, updates and training seconds alike). Results are written after every run,
and runs already in ``--output`` are skipped, so an interrupted measurement resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from vla_steer.config import load_recipe
from vla_steer.provenance import git_commit, hardware, package_versions

RESULTS = Path(__file__).parent / "results"


def noise_action_vec_env(recipe, base, layout, seed: int):
    """The official design's ``DiffusionPolicyEnvWrapper``: an SB3 ``VecEnvWrapper``-like vector env whose action is
    the latent of every env; ``step`` decodes all chunks in one batch with the frozen base and executes them (reward
    summed over the chunk). Observations are the head's features. Timeouts are marked ``TimeLimit.truncated`` so SB3
    bootstraps them, as vla_steer does (the official wrapper does not: research notes, DSRL section)."""
    from stable_baselines3.common.vec_env import VecEnv

    from vla_steer.training.collector import Collector, step_info, with_final_observations

    class NoiseActionVecEnv(VecEnv):
        def __init__(self):
            self.collector = Collector(recipe, base, layout, seed)
            bound = recipe.head.bound
            super().__init__(recipe.env.num_envs,
                             gym.spaces.Box(-np.inf, np.inf, (base.adapter.feature_dim,), np.float32),
                             gym.spaces.Box(-bound, bound, (layout.latent_dim,), np.float32))
            self.env_steps, self._resets, self._latent = 0, 0, None

        def _features(self, context) -> np.ndarray:
            return context.features.float().cpu().numpy()

        def reset(self):
            self.collector.reset(self._resets)
            self._resets += 1
            return self._features(self.collector.context)

        def step_async(self, actions):
            self._latent = torch.as_tensor(np.asarray(actions, np.float32), device=self.collector.adapter.device)

        def step_wait(self):
            c = self.collector
            _, env_actions = c.env_actions(c.context, self._latent)
            obs, reward, terminated, truncated, info = c.envs.step(env_actions)
            done = terminated | truncated
            self.env_steps += int(step_info(info, done, "chunk_steps").sum())
            infos = [{} for _ in range(self.num_envs)]
            if done.any():
                final = self._features(c.encode(with_final_observations(obs, info, done)))
                for i in np.nonzero(done)[0]:
                    infos[i] = {"terminal_observation": final[i], "TimeLimit.truncated": bool(truncated[i] and not terminated[i])}
            c.context = c.encode(obs)
            return self._features(c.context), reward.astype(np.float32), done, infos

        def close(self):
            self.collector.close()

        def get_attr(self, attr_name, indices=None):
            return [None] * self.num_envs

        def set_attr(self, attr_name, value, indices=None):
            pass

        def env_method(self, method_name, *args, indices=None, **kwargs):
            return [None] * self.num_envs

        def env_is_wrapped(self, wrapper_class, indices=None):
            return [False] * self.num_envs

    return NoiseActionVecEnv()


class SB3Head:
    """SB3's actor behind vla_steer's acting interface, so the same evaluator scores it."""

    def __init__(self, model, bound: float):
        self.model, self.bound = model, bound

    @torch.no_grad()
    def act(self, features: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        squashed = self.model.policy.actor(features.float(), deterministic=deterministic)  # in [-1, 1]
        return self.bound * squashed


def run_official(recipe, base, layout, seed: int, eval_every: int, evaluate) -> dict:
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    t, a, h = recipe.train, recipe.algorithm, recipe.head
    chunk = base.adapter.n_action_steps
    envs = noise_action_vec_env(recipe, base, layout, seed * 10_000)
    model = SAC("MlpPolicy", envs, learning_rate=a.critic_lr, buffer_size=t.buffer_size, batch_size=a.batch_size,
                tau=a.tau, gamma=a.gamma, train_freq=1, gradient_steps=a.utd * recipe.env.num_envs,
                learning_starts=t.warmup_env_steps // chunk, ent_coef="auto", target_entropy=0.0, seed=seed,
                policy_kwargs={"net_arch": [h.hidden_dim] * h.num_layers, "n_critics": h.num_critics}, device="cpu")
    curve, clock = [], {"train": 0.0, "start": time.perf_counter(), "next_eval": eval_every}

    class Evaluate(BaseCallback):
        def _on_step(self) -> bool:
            steps = envs.env_steps
            if steps >= clock["next_eval"]:
                clock["train"] += time.perf_counter() - clock["start"]
                curve.append({"env_steps": steps, "train_seconds": clock["train"], "updates": model._n_updates,
                              **evaluate(SB3Head(model, h.bound))})
                clock["next_eval"] += eval_every
                clock["start"] = time.perf_counter()
            return steps < t.total_env_steps

    model.learn(total_timesteps=10 ** 9, callback=Evaluate())
    envs.close()
    return {"curve": curve, "env_steps": envs.env_steps, "updates": model._n_updates}


def run_vla_steer(recipe, seed: int, eval_every: int, evaluate_with) -> dict:
    from vla_steer.training import SteeringTrainer

    trainer = SteeringTrainer(recipe, base=evaluate_with["base"])
    trainer._start()  # evaluates the base once: before the clock starts
    curve, clock = [], {"train": 0.0, "start": time.perf_counter(), "next_eval": eval_every}
    while trainer.iteration < trainer.total_iterations:
        trainer.collect(warm=trainer.iteration < trainer.warmup_iterations)
        trainer.iteration += 1
        if trainer.iteration >= trainer.warmup_iterations:
            for _ in range(recipe.algorithm.utd * recipe.env.num_envs):
                trainer.learner.update()
        if trainer.env_steps >= clock["next_eval"]:
            clock["train"] += time.perf_counter() - clock["start"]
            curve.append({"env_steps": trainer.env_steps, "train_seconds": clock["train"], "updates": trainer.updates,
                          **evaluate_with["evaluate"](trainer.algo)})
            clock["next_eval"] += eval_every
            clock["start"] = time.perf_counter()
    trainer.collector.close()
    return {"curve": curve, "env_steps": trainer.env_steps, "updates": trainer.updates}


WINDOW = 3  # evaluations in the rolling mean (one 20-episode evaluation swings by +-0.2)


def summarize(run: dict, target: float) -> dict:
    """Throughput and time to target by two criteria. First reach: the first evaluation at the target (as planned;
    one lucky 20-episode evaluation triggers it). Rolling mean: the first evaluation at which it and the
    ``WINDOW - 1`` before it reach the target on average, in successes (added after the first runs showed how noisy
    first reach is; a window may still hold evaluations below the target)."""
    curve = run["curve"]
    hit = next((point for point in curve if point["success_rate"] >= target), None)
    successes = [round(point["success_rate"] * point["episodes"]) for point in curve]
    episodes = [point["episodes"] for point in curve]
    held = next((curve[i] for i in range(WINDOW - 1, len(curve))  # integer counts: no rounding at the boundary
                 if sum(successes[i - WINDOW + 1:i + 1]) >= target * sum(episodes[i - WINDOW + 1:i + 1]) - 1e-9), None)
    rates = [point["success_rate"] for point in curve]
    last = curve[-1] if curve else {"env_steps": float("nan"), "updates": float("nan"), "train_seconds": float("nan")}
    return {"env_steps_per_s": last["env_steps"] / last["train_seconds"],
            "updates_per_s": last["updates"] / last["train_seconds"],
            "train_seconds": last["train_seconds"], "env_steps": last["env_steps"],
            "seconds_to_target": hit["train_seconds"] if hit else None,
            "env_steps_to_target": hit["env_steps"] if hit else None,
            f"seconds_to_target_mean{WINDOW}": held["train_seconds"] if held else None,
            f"env_steps_to_target_mean{WINDOW}": held["env_steps"] if held else None,
            "final_success": curve[-1]["success_rate"] if curve else None,
            "mean_success_second_half": float(np.mean(rates[len(rates) // 2:])) if rates else None}


def _ratio(theirs: dict, mine: dict, key: str, total: str) -> dict | None:
    """official / vla_steer for one seed and criterion. Where only one design reached the target, the other's whole
    run stands in for its time, and the ratio is a bound: ``lower`` (only vla_steer reached it) or ``upper`` (only
    the official design did). ``None``: neither reached it."""
    a, b = theirs[key], mine[key]
    if a is None and b is None:
        return None
    if a is not None and b is not None:
        return {"ratio": a / b, "bound": None}
    return {"ratio": theirs[total] / b, "bound": "lower"} if b is not None else {"ratio": a / mine[total], "bound": "upper"}


def comparison(results: dict) -> dict:
    """Per design: throughput (mean and range over seeds; the designs run one after another, so a loaded machine
    moves the seconds but not the env steps) and per-seed summaries; per seed and criterion, official / vla_steer
    ratios of training seconds and of env steps to the target (:func:`_ratio`)."""
    by_design: dict[str, dict[int, dict]] = {}
    for run in results["runs"]:
        by_design.setdefault(run["design"], {})[run["seed"]] = summarize(run, results["target"])
    out = {}
    for design, seeds in by_design.items():
        rates = [r["env_steps_per_s"] for r in seeds.values()]
        out[design] = {"env_steps_per_s": float(np.mean(rates)), "env_steps_per_s_range": [min(rates), max(rates)],
                       "updates_per_s": float(np.mean([r["updates_per_s"] for r in seeds.values()])), "per_seed": seeds}
    official, ours = (next((d for d in by_design if d.startswith(prefix)), None) for prefix in ("official", "vla_steer"))
    if official and ours:
        for unit, total in (("seconds", "train_seconds"), ("env_steps", "env_steps")):
            ratios = out[f"official_over_vla_steer_{unit}"] = {}
            for criterion in ("target", f"target_mean{WINDOW}"):
                ratios[criterion] = {seed: _ratio(by_design[official][seed], by_design[ours][seed], f"{unit}_to_{criterion}", total)
                                     for seed in sorted(set(by_design[official]) & set(by_design[ours]))}
    return out


def plot(results: dict, path: Path) -> Path:
    """Success (tuning evaluations) against training seconds and env steps, one line per design and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    colors = {}
    for run in results["runs"]:
        first = run["design"] not in colors  # one legend entry per design
        color = colors.setdefault(run["design"], f"C{len(colors)}")
        for ax, x in zip(axes, ("train_seconds", "env_steps")):
            ax.plot([p[x] for p in run["curve"]], [p["success_rate"] for p in run["curve"]], color=color, alpha=0.8,
                    label=run["design"] if first else None)
    for ax, label in zip(axes, ("training seconds (one thread)", "env steps")):
        ax.axhline(results["target"], color="gray", ls="--")
        ax.set_xlabel(label)
        ax.set_ylabel("success (20 tuning episodes)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"DSRL-SAC, official design vs vla_steer ({results.get('rules', 'matched')} rules), one line per seed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--target", type=float, default=0.5, help="success rate whose reach is timed")
    parser.add_argument("--eval-every", type=int, default=2000, help="env steps between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--rules", choices=["matched", "own"], default="matched",
                        help="vla_steer with SB3's learning rules (matched) or the recipe's own (own)")
    parser.add_argument("--output", type=Path, help="default: results/vs_official.json (matched) or "
                                                      "results/vs_official_own_rules.json (own)")
    args = parser.parse_args()
    args.output = args.output or RESULTS / ("vs_official.json" if args.rules == "matched" else "vs_official_own_rules.json")
    torch.set_num_threads(1)

    from accelerate import Accelerator

    from vla_steer.adapters.base import LatentLayout
    from vla_steer.pipeline import build_base
    from vla_steer.training.evaluator import Evaluator

    results = {"recipe": args.recipe, "overrides": args.overrides, "target": args.target, "rules": args.rules, "runs": [],
               "git_commit": git_commit(), "versions": package_versions(), "hardware": hardware()}
    if args.output.is_file():  # resume an interrupted measurement of the same setting
        earlier = json.loads(args.output.read_text())
        setting = (earlier["recipe"], earlier["overrides"], earlier["target"], earlier.get("rules", "matched"))
        if setting == (args.recipe, args.overrides, args.target, args.rules):
            results["runs"] = earlier["runs"]
    for seed in args.seeds:
        sb3_rules = ["algorithm.backup_entropy=true", "algorithm.actor_reduction=min"] if args.rules == "matched" else []
        recipe = load_recipe(args.recipe, [*args.overrides, f"train.seed={seed}", "algorithm.name=dsrl_sac", *sb3_rules,
                                           f"train.eval_episodes={args.eval_episodes}", "train.show_progress=false",
                                           f"train.output_dir=runs/vs_official/seed{seed}", "train.resume=false"])
        a = recipe.algorithm
        if not (a.actor_lr == a.critic_lr == a.temperature_lr) or a.discount_mode != "chunk":
            raise SystemExit("SB3's SAC has one learning rate and discounts per transition: set algorithm.actor_lr, "
                             "critic_lr and temperature_lr equal and discount_mode: chunk")
        base = build_base(recipe, Accelerator(cpu=True), show_progress=False)
        layout = LatentLayout.from_head(recipe.head, base.adapter.noise_shape)
        if args.rules == "matched":  # SB3's 0 nats on the squashed action is latent_dim * log(bound) on the latent
            recipe = dataclasses.replace(recipe, algorithm=dataclasses.replace(
                a, target_entropy=layout.latent_dim * math.log(recipe.head.bound)))
        evaluator = Evaluator(recipe, base, layout, seed=recipe.train.eval_seed)
        evaluate = lambda head: evaluator.evaluate("policy", head)  # noqa: E731
        for design, run in (("official (SB3 SAC + noise-action wrapper)",
                             lambda: run_official(recipe, base, layout, seed, args.eval_every, evaluate)),
                            ("vla_steer dsrl_sac",
                             lambda: run_vla_steer(recipe, seed, args.eval_every, {"base": base, "evaluate": evaluate}))):
            if any((r["design"], r["seed"]) == (design, seed) for r in results["runs"]):
                continue
            torch.manual_seed(seed)
            outcome = run()
            results["runs"].append({"design": design, "seed": seed, **summarize(outcome, args.target), **outcome})
            print(f"seed {seed} {design}: {json.dumps(summarize(outcome, args.target))}", flush=True)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(results, indent=2))
    results["comparison"] = comparison(results)
    args.output.write_text(json.dumps(results, indent=2))
    plot(results, args.output.with_suffix(".png"))
    print(json.dumps({k: v for k, v in results["comparison"].items() if k.startswith("official_over")}, indent=1))
    print(f"results: {args.output}")


if __name__ == "__main__":
    main()
