"""The LeRobot-native path: ``vla-steer train`` on a LeRobot checkpoint written by LeRobot's own save, in LeRobot's
envs (``pusht`` from gym-pusht, this project's ``vla_steer_meta_world``), fed exactly as ``lerobot-eval`` feeds it.

What is checked on real parts (tiny random LeRobot policies, real simulators, real LeRobotDatasets):
* training runs from ``base.path`` (a directory, or a Hub repo id + revision through a hand-built HF cache offline);
* the adapter's decode equals the policy's own ``predict_action_chunk(noise=...)`` on the processed observation;
* with ``n_obs_steps=2`` the features the trainer computes equal those the deployed ``steered`` policy computes in
  a ``lerobot-eval``-style loop (same env seed, same deterministic head);
* bad bases / envs fail before any work, naming the missing keys and the fix;
* rollouts recorded as a LeRobotDataset reload with LeRobot.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tiny_common import add_to_hf_cache, save_pusht_diffusion_base, save_state_diffusion_base
from vla_steer.cli import main as cli
from vla_steer.config import RecipeError, recipe_from_dict
from vla_steer.training import SteeringTrainer
from vla_steer.training.collector import Collector, MissingInputsError

PUSHT_STATE = {"type": "pusht", "obs_type": "environment_state_agent_pos", "episode_length": 40, "num_envs": 2}


def native_recipe(tmp_path: Path, base_path: str, env: dict | None = None, **sections) -> dict:
    recipe = {
        "name": "lerobot_native",
        "env": dict(env or PUSHT_STATE),
        "base": {"path": base_path, "adapter_kwargs": {"num_inference_steps": 4}},
        "head": {"hidden_dim": 32, "num_layers": 2, "bound": 3.0},
        "algorithm": {"name": "lpds", "batch_size": 32},
        "train": {"total_env_steps": 320, "warmup_env_steps": 80, "eval_every": 160, "eval_episodes": 2,
                  "eval_num_envs": 2, "entropy_states": 4, "entropy_draws": 8, "checkpoint_every": 160,
                  "output_dir": str(tmp_path / "run"), "show_progress": False, "buffer_size": 10_000,
                  "torch_threads": 1},
    }
    for section, values in sections.items():
        recipe[section] = {**recipe.get(section, {}), **values}
    return recipe


@pytest.fixture(scope="module")
def pusht_base(tmp_path_factory) -> Path:
    return save_pusht_diffusion_base(tmp_path_factory.mktemp("pusht_base") / "pretrained_model")


def save_fast_metaworld_diffusion_base(directory: Path) -> Path:
    """A tiny random DiffusionPolicy reading ``vla_steer_meta_world``'s state observations (4-d hand, 39-d env)."""
    return save_state_diffusion_base(directory, state_dim=4, env_dim=39, action_low=[-1.0] * 4, action_high=[1.0] * 4,
                                     n_obs_steps=2)


# -------------------------------------------------------------------------------------------------------------
def lerobot_chunk(policy, batch: dict, noise: torch.Tensor) -> torch.Tensor:
    """LeRobot's own ``predict_action_chunk(noise=...)``, its observation queues filled frame by frame from a
    processed history batch ``[B, n_obs_steps, ...]`` (what its ``select_action`` would have queued)."""
    from lerobot.policies.utils import populate_queues

    policy.reset()
    keys = [key for key in policy.config.input_features if key in batch]
    for t in range(policy.config.n_obs_steps):
        policy._queues = populate_queues(policy._queues, {key: batch[key][:, t] for key in keys})
    return policy.predict_action_chunk({key: batch[key][:, -1] for key in keys}, noise=noise)


@pytest.mark.parametrize("algorithm", [{"name": "lpds", "critic": "action"}, {"name": "dsrl_sac"}])
def test_train_on_a_lerobot_checkpoint_in_pusht(pusht_base, tmp_path, algorithm):
    recipe = recipe_from_dict(native_recipe(tmp_path, str(pusht_base), algorithm=algorithm))
    trainer = SteeringTrainer(recipe)
    results = trainer.run()
    assert trainer.env_steps >= 300 and trainer.updates > 0
    assert results["base_policy"]["source"] == str(pusht_base) and results["task"] == "pusht/PushT-v0"
    assert (tmp_path / "run" / "head" / "head.safetensors").is_file()

    # the head's decode is LeRobot's own chunk for the noise it picks, on the processed observation
    collector = trainer.collector
    raw, _ = collector.envs.reset(seed=[7, 8])
    batch = trainer.base.observations(raw, collector.tasks())
    assert batch["observation.state"].shape == (2, 2, 2), "a history of n_obs_steps=2 processed frames"
    context = trainer.adapter.encode(batch)
    noise = trainer.layout.to_noise(trainer.algo.act(context.features, deterministic=True))
    ours = trainer.adapter.decode(context, noise)
    theirs = lerobot_chunk(trainer.adapter.policy, batch, noise)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    collector.close()


def test_train_a_lerobot_smolvla_from_pusht_pixels(tmp_path):
    """SmolVLA (LeRobot's class, toy SmolVLM) on PushT's camera + agent position + the task text lerobot-eval adds;
    its KV-cache contexts are not storable: LP-DS runs with its latent critic, DSRL-NA by re-encoding stored
    observations."""
    from tiny_vla import save_pusht_smolvla_base

    base = save_pusht_smolvla_base(tmp_path)
    pixels = {**PUSHT_STATE, "obs_type": "pixels_agent_pos", "episode_length": 24}
    recipe = recipe_from_dict(native_recipe(tmp_path, str(base), env=pixels, base={"adapter_kwargs": {}},
                                            algorithm={"name": "lpds", "critic": "latent"},
                                            train={"total_env_steps": 192, "warmup_env_steps": 64}))
    trainer = SteeringTrainer(recipe)
    trainer.run()
    assert trainer.updates > 0 and (tmp_path / "run" / "head" / "head.safetensors").is_file()

    raw, _ = trainer.collector.envs.reset(seed=[3, 4])
    batch = trainer.base.observations(raw, trainer.collector.tasks())
    assert batch["observation.image"].shape == (2, 3, 96, 96) and "observation.language.tokens" in batch
    context = trainer.adapter.encode(batch)
    noise = trainer.layout.to_noise(trainer.algo.act(context.features, deterministic=True))
    theirs = trainer.adapter.policy.predict_action_chunk(batch, noise=noise)
    torch.testing.assert_close(trainer.adapter.predict_action_chunk(context, noise), theirs, rtol=0, atol=1e-5)
    trainer.collector.close()

    # DSRL-NA: the KV cache is not stored, the processed observations are (PushT's frames as uint8, exactly), and
    # every update re-encodes them
    from vla_steer.algorithms.stored_observations import stored_observations

    other = recipe.to_dict()
    na = SteeringTrainer(recipe_from_dict({**other, "algorithm": {"name": "dsrl_na", "batch_size": 16},
                                           "train": {**other["train"], "resume": False, "total_env_steps": 128,
                                                     "warmup_env_steps": 64}}))
    na.run()
    assert na.updates > 0 and na.buffer.storage["obs_u8/observation.image"].dtype == torch.uint8
    stored = {key: value[:4] for key, value in na.buffer.storage.items()}
    with torch.no_grad():
        features = na.adapter.encode(stored_observations(stored, "next_")).features
    torch.testing.assert_close(features, stored["next_features"], rtol=0, atol=1e-5)
    na.collector.close()


def test_cli_trains_from_a_hub_repo_id_at_a_revision_offline(pusht_base, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    cache = tmp_path / "hf_cache"
    commit = "a" * 40
    add_to_hf_cache(cache, "org/pusht-diffusion", commit, pusht_base, ref=None)  # reachable only by its commit
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = native_recipe(tmp_path, "org/pusht-diffusion", base={"revision": commit}, train={"total_env_steps": 160})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(cfg))
    assert cli(["train", str(tmp_path / "r.yaml")]) in (None, 0)
    out = capsys.readouterr().out
    assert "pusht/PushT-v0" in out and "steered" in out
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["base_policy"] == {**results["base_policy"], "source": "org/pusht-diffusion", "revision": commit}


def test_training_features_equal_the_deployed_steered_policys(pusht_base, tmp_path):
    """n_obs_steps=2: the collector keeps LeRobot's observation history, so the features the head was trained on
    are the features the deployed ``steered`` policy computes in a lerobot-eval loop (same seed, same actions)."""
    from lerobot.envs.factory import make_env
    from lerobot.envs.utils import add_envs_task, preprocess_observation

    from vla_steer.envs.lerobot_envs import lerobot_env_config
    from vla_steer.lerobot_policy import ActingHead, SteeredPolicy
    from vla_steer.pipeline import build_base, load_lerobot_policy

    recipe = recipe_from_dict(native_recipe(tmp_path, str(pusht_base), env={**PUSHT_STATE, "num_envs": 1},
                                            train={"total_env_steps": 160}))
    trainer = SteeringTrainer(recipe)
    trainer.run()
    chunks, seed = 6, 11

    # the trainer's side: its collector on one env, the head acting deterministically
    collector = Collector(recipe, build_base(recipe), trainer.layout, seed=seed)
    collector.reset(iteration=0)
    trained = [collector.context.features]
    for _ in range(chunks - 1):
        collector.step(lambda f: trainer.algo.act(f, deterministic=True), 0.99, "chunk")
        trained.append(collector.context.features)
    collector.close()

    # the deployed side: LeRobot's env, LeRobot's processing, the steered policy's select_action
    policy, preprocessor, postprocessor = load_lerobot_policy(pusht_base, "cpu")
    steered = SteeredPolicy.from_base(policy, ActingHead.from_run(tmp_path / "run"), base_path=str(pusht_base),
                                      adapter_kwargs={"num_inference_steps": 4}, deterministic=True)
    deployed, encode = [], steered.adapter.encode

    def encode_and_keep(batch):  # a spy on the real encode: keeps the features the deployed head reads
        context = encode(batch)
        deployed.append(context.features)
        return context

    steered.adapter.encode = encode_and_keep
    env = next(iter(make_env(lerobot_env_config("pusht", PUSHT_STATE_OPTIONS), n_envs=1)["pusht"].values()))
    obs, _ = env.reset(seed=[seed])
    steered.reset()
    for _ in range(chunks * steered.n_action_steps):
        batch = preprocessor(add_envs_task(env, preprocess_observation(obs)))
        with torch.no_grad():
            action = postprocessor(steered.select_action(batch))
        obs, *_ = env.step(action.numpy())
    env.close()
    assert len(deployed) >= chunks
    for step, (ours, theirs) in enumerate(zip(trained, deployed)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5, msg=f"features differ at chunk {step}")


PUSHT_STATE_OPTIONS = {key: value for key, value in PUSHT_STATE.items() if key not in ("type", "num_envs")}


def test_missing_policy_inputs_fail_before_any_rollout(pusht_base, tmp_path):
    """PushT's pixel observations lack the environment state this base reads: refused before the base is
    evaluated, naming the key and the fix."""
    recipe = recipe_from_dict(native_recipe(tmp_path, str(pusht_base),
                                            env={**PUSHT_STATE, "obs_type": "pixels_agent_pos"}))
    trainer = SteeringTrainer(recipe)
    with pytest.raises(MissingInputsError, match=r"observation\.environment_state.*rename_map"):
        trainer.run()
    assert not (tmp_path / "run" / "metrics.jsonl").exists(), "nothing ran before the check"


def test_bad_bases_and_envs_are_refused_with_the_fix(pusht_base, tmp_path):
    other = tmp_path / "act"
    shutil.copytree(pusht_base, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "type": "act"}))
    with pytest.raises(ValueError, match=r"'act' policy, which no adapter steers; supported types: diffusion, pi0"):
        SteeringTrainer(recipe_from_dict(native_recipe(tmp_path, str(other))))
    (other / "policy_preprocessor.json").unlink()
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="lacks policy_preprocessor.json.*lerobot-train"):
        SteeringTrainer(recipe_from_dict(native_recipe(tmp_path, str(other))))
    with pytest.raises(FileNotFoundError, match=r"has no config.json.*Did you mean .*pretrained_model"):
        SteeringTrainer(recipe_from_dict(native_recipe(tmp_path, str(pusht_base.parent))))
    with pytest.raises(RecipeError, match="Did you mean 'obs_type'"):
        recipe_from_dict(native_recipe(tmp_path, str(pusht_base), env={"type": "pusht", "obs_typ": "x"}))
    with pytest.raises(RecipeError, match="needs a LeRobot base"):
        recipe_from_dict({"env": {"type": "pusht"}})


def test_fast_metaworld_env_type_with_recorded_rollouts(tmp_path):
    """This project's fast Meta-World as a LeRobot env type, and rollouts recorded as a LeRobotDataset."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    base = save_fast_metaworld_diffusion_base(tmp_path / "mw_base")
    env = {"type": "vla_steer_meta_world", "task": "push-v3", "episode_length": 24, "num_envs": 2}
    recipe = recipe_from_dict(native_recipe(tmp_path, str(base), env=env, train={"total_env_steps": 160,
                                                                               "record_rollouts": True}))
    trainer = SteeringTrainer(recipe)
    trainer.run()
    dataset = LeRobotDataset("local/rollouts", root=tmp_path / "run" / "rollouts")
    finished = len(trainer.collector.tracker.episodes["length"])
    assert dataset.num_episodes == finished >= 4
    assert dataset.num_frames == sum(trainer.collector.tracker.episodes["length"])
    frame = dataset[0]
    assert frame["observation.environment_state"].shape == (39,) and frame["steering.latent"].shape == (32,)
    assert dataset.meta.tasks.index[0] == "Push the puck to a goal"
    returns = np.array(trainer.collector.tracker.episodes["return"])
    rewards = torch.stack([dataset[i]["next.reward"] for i in range(dataset.num_frames)]).reshape(-1)
    assert np.isclose(rewards.sum().item(), returns.sum(), atol=1e-3)

    # a resumed run goes on recording into the same dataset; a fresh run records afresh and keeps the old one aside
    longer = recipe_from_dict({**recipe.to_dict(), "train": {**recipe.to_dict()["train"], "total_env_steps": 240}})
    SteeringTrainer(longer).run()
    assert LeRobotDataset("local/rollouts", root=tmp_path / "run" / "rollouts").num_episodes > dataset.num_episodes
    fresh = recipe_from_dict({**recipe.to_dict(), "train": {**recipe.to_dict()["train"], "resume": False}})
    SteeringTrainer(fresh).run()
    assert len(list((tmp_path / "run").glob("rollouts.before-*"))) == 1
    assert LeRobotDataset("local/rollouts", root=tmp_path / "run" / "rollouts").num_episodes == dataset.num_episodes


def test_offline_warm_start_lowers_the_critics_loss_on_held_out_transitions(tmp_path):
    """DSRL-NA's action critic pre-trained on a LeRobotDataset with rewards: its TD loss on transitions of other
    episodes (other seeds) drops; then the run goes on mixing offline and online batches."""
    from vla_steer.data.demos import generate_lerobot_env_demonstrations
    from vla_steer.envs.lerobot_metaworld import FastMetaWorldEnvConfig

    base = save_fast_metaworld_diffusion_base(tmp_path / "mw_base")
    env_config = FastMetaWorldEnvConfig(task="push-v3", episode_length=30)
    demos = lambda seed, n: generate_lerobot_env_demonstrations(  # noqa: E731
        env_config, num_episodes=n, action_noise=0.3, seed=seed, cache_dir=tmp_path / f"demos{seed}", show_progress=False)
    train_root, held_out_root = demos(0, 6), demos(500, 3)
    env = {"type": "vla_steer_meta_world", "task": "push-v3", "episode_length": 30, "num_envs": 2}
    recipe = recipe_from_dict(native_recipe(
        tmp_path, str(base), env=env, algorithm={"name": "dsrl_na"},
        offline={"dataset": str(train_root), "fraction": 0.5, "pretrain_updates": 300}))
    trainer = SteeringTrainer(recipe)
    trainer.load_offline_data()
    held_out = trainer.offline_transitions(held_out_root)
    assert held_out["action"].shape[1] == 4 * 4 and (held_out["latent"] == 0).all()
    before = trainer.algo.action_critic_loss(held_out).item()
    trainer.learner.pretrain_critic(300)
    after = trainer.algo.action_critic_loss(held_out).item()
    assert 0 <= after < 0.5 * before, (before, after)  # a squared TD error: never negative

    trainer.run()  # a fresh run: pretrains (logged), then mixes offline rows into every batch
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "offline_pretrain" and "offline/critic_loss" in log[0]
    assert trainer.learner.offline is not None and len(trainer.buffer) > 0


def test_from_a_lerobot_checkpoint_to_lerobot_eval(pusht_base, tmp_path, capsys):
    """The whole user story on PushT: vla-steer train (base.path) -> vla-steer push --dry-run --output-dir (a steered
    LeRobot policy directory) -> lerobot-eval --policy.path=<that directory> in the same env."""
    import subprocess
    import sys

    cfg = native_recipe(tmp_path, str(pusht_base), train={"total_env_steps": 160})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(cfg))
    assert cli(["train", str(tmp_path / "r.yaml")]) in (None, 0)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    capsys.readouterr()
    # vla-steer eval rebuilds base + head only and scores exactly what training reported: the saved head was evaluated
    assert cli(["eval", str(tmp_path / "run")]) in (None, 0)
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{"):])  # LeRobot prints "Loading weights ..." first
    assert report["base"] == results["base"]
    assert report["steered"] == {key: results["final"][key] for key in report["steered"]}
    export = tmp_path / "export"
    assert cli(["push", str(tmp_path / "run"), "--repo-id", "me/pusht-lpds", "--dry-run", "--output-dir", str(export)]) in (None, 0)
    config = json.loads((export / "config.json").read_text())
    assert config["type"] == "steered" and config["base_path"] == str(pusht_base.resolve())
    assert config["adapter_kwargs"] == {"num_inference_steps": 4}  # the head sees the base as it was trained to
    capsys.readouterr()

    command = [str(Path(sys.executable).parent / "lerobot-eval"), f"--policy.path={export}", "--env.type=pusht",
               "--env.obs_type=environment_state_agent_pos", "--env.episode_length=40", "--eval.n_episodes=2",
               "--eval.batch_size=2", "--policy.device=cpu", f"--output_dir={tmp_path / 'eval'}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((tmp_path / "eval" / "eval_info.json").read_text())
    assert info["overall"]["n_episodes"] == 2


def test_evaluation_in_a_lerobot_env_repeats_exactly(tmp_path):
    """Same evaluation seeds, same start states: two evaluations of the base agree to the last digit (Meta-World
    seeds its start states when its env is made, which a seeded reset of vla_steer_meta_world now does)."""
    from vla_steer.adapters.base import LatentLayout
    from vla_steer.pipeline import build_base
    from vla_steer.training.evaluator import Evaluator

    base_dir = save_fast_metaworld_diffusion_base(tmp_path / "mw_base")
    env = {"type": "vla_steer_meta_world", "task": "push-v3", "episode_length": 16, "num_envs": 2}
    recipe = recipe_from_dict(native_recipe(tmp_path, str(base_dir), env=env, train={"eval_episodes": 4}))
    base = build_base(recipe)
    evaluator = Evaluator(recipe, base, LatentLayout("full", base.adapter.noise_shape), seed=123)
    first, second = evaluator.evaluate("base"), evaluator.evaluate("base")
    assert first == second
    other = Evaluator(recipe, base, LatentLayout("full", base.adapter.noise_shape), seed=456).evaluate("base")
    assert other["return_mean"] != first["return_mean"], "other seeds, other start states"
