"""Image observations end to end: rendered Meta-World frames -> LeRobotDataset with images -> BC of LeRobot's real
SmolVLAPolicy (toy size, local random-init SmolVLM) -> LP-DS steering on its VLM prefix embeddings."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from tiny_common import held_out_critic_losses

from vla_steer.config import RecipeError, recipe_from_dict
from vla_steer.envs.registry import IMAGE_KEY, STATE_KEY, make_env, task_description
from vla_steer.pipeline import build_base, ensure_base, ensure_demos
from vla_steer.training import SteeringTrainer


def pixel_recipe(tmp_path, **sections) -> dict:
    recipe = {
        "name": "tiny_pixels",
        "env": {"id": "metaworld/reach-v3", "observation": "pixels_state", "image_size": 32, "num_envs": 2,
                "max_episode_steps": 24},
        "demos": {"num_episodes": 2, "action_noise": 0.1},
        "base": {"type": "smolvla", "hidden_dim": 32, "num_layers": 2, "horizon": 4, "n_action_steps": 4,
                 "num_inference_steps": 3, "bc_steps": 30, "bc_batch_size": 16},
        "head": {"hidden_dim": 32, "num_layers": 2, "bound": 3.0},
        "algorithm": {"name": "lpds", "critic": "latent", "batch_size": 16},
        "train": {"total_env_steps": 96, "warmup_env_steps": 32, "eval_every": 96, "eval_episodes": 2,
                  "eval_num_envs": 2, "entropy_states": 2, "entropy_draws": 4, "checkpoint_every": 96,
                  "output_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"), "show_progress": False,
                  "buffer_size": 1000, "torch_threads": 1},
    }
    for section, values in sections.items():
        recipe[section] = {**recipe[section], **values}
    return recipe


def test_pixels_state_observation_is_a_rendered_image_plus_the_state():
    env = make_env("metaworld/push-v3", seed=0, observation="pixels_state", image_size=48, state="agent_pos")
    obs, _ = env.reset(seed=0)
    assert set(obs) == {IMAGE_KEY, STATE_KEY}
    image, state = obs[IMAGE_KEY], obs[STATE_KEY]
    assert image.shape == (3, 48, 48) and image.dtype == np.float32 and 0.0 <= image.min() < image.max() <= 1.0
    assert state.shape == (4,) and np.allclose(state, env.flat_observation[:4])
    assert env.observation_space[IMAGE_KEY].contains(image) and env.observation_space[STATE_KEY].shape == (4,)
    next_obs, *_ = env.step(np.array([1.0, 0.0, 0.0, 0.0], np.float32))  # the hand moves: so does the picture
    assert np.abs(next_obs[IMAGE_KEY] - image).max() > 0.05
    env.close()
    with pytest.raises(ValueError, match="Meta-World envs only"):
        make_env("LunarLanderContinuous-v3", observation="pixels_state")
    assert task_description("metaworld/push-v3") == "Push the puck to a goal"


def test_recipe_rejects_image_observations_for_state_policies_and_vice_versa(tmp_path):
    with pytest.raises(RecipeError, match="use base.type: smolvla"):
        recipe_from_dict(pixel_recipe(tmp_path, base={"type": "diffusion"}))
    with pytest.raises(RecipeError, match="set env.observation: pixels_state"):
        recipe_from_dict(pixel_recipe(tmp_path, env={"observation": "state"}))


@pytest.fixture(scope="module")
def trained_pixel_base(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("pixels")
    recipe = recipe_from_dict(pixel_recipe(tmp_path))
    return tmp_path, recipe, ensure_demos(recipe, show_progress=False), ensure_base(recipe, show_progress=False)


def test_pixel_demos_are_a_lerobot_dataset_with_images_and_the_task_text(trained_pixel_base):
    _, recipe, demos_root, _ = trained_pixel_base
    dataset = LeRobotDataset(repo_id="local/pixels", root=demos_root)
    assert dataset.features[IMAGE_KEY]["dtype"] == "image" and dataset.meta.total_episodes == 2
    frame = dataset[3]
    assert frame[IMAGE_KEY].shape == (3, 32, 32) and frame[STATE_KEY].shape == (39,)
    assert frame["task"] == task_description(recipe.env.id) == "Reach a goal position"


def test_smolvla_bc_writes_a_lerobot_checkpoint_that_the_adapter_steers(trained_pixel_base):
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    _, recipe, _, base_dir = trained_pixel_base
    for name in ("config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json"):
        assert (base_dir / name).is_file(), name
    log = json.loads((base_dir / "bc_log.json").read_text())
    assert log["steps"] == 30 and np.isfinite(log["loss_every_50"]).all()
    # the checkpoint is LeRobot's own: it loads with SmolVLAPolicy.from_pretrained
    assert isinstance(SmolVLAPolicy.from_pretrained(base_dir), SmolVLAPolicy)

    base = build_base(recipe)
    adapter = base.adapter
    env = make_env(recipe.env.id, seed=1, observation="pixels_state", image_size=32)
    obs, _ = env.reset(seed=1)
    raw = {key: np.repeat(value[None], 3, axis=0) for key, value in obs.items()}
    # raw observation -> the base's own preprocessor with the task text -> the adapter; actions back to env units
    context = adapter.encode(base.observations(raw, [task_description(recipe.env.id)] * 3))
    noise = torch.randn(3, *adapter.noise_shape, generator=torch.Generator().manual_seed(0))
    actions = base.actions(adapter.decode(context, noise))
    assert context.features.shape == (3, adapter.feature_dim) and actions.shape == (3, 4, 4)
    assert torch.equal(actions, base.actions(adapter.decode(context, noise)))  # deterministic in the noise
    assert not torch.allclose(actions[0], base.actions(adapter.decode(context, -noise))[0])  # ... and steered by it
    env.close()


def test_lpds_steers_the_pixel_smolvla_without_touching_it(trained_pixel_base):
    tmp_path, recipe, _, _ = trained_pixel_base
    trainer = SteeringTrainer(recipe)
    before = {k: v.clone() for k, v in trainer.adapter.policy.state_dict().items()}
    results = trainer.run()
    assert results["env_steps"] >= 96 and np.isfinite(results["final"]["return_mean"])
    assert (Path(recipe.train.output_dir) / "head" / "head.safetensors").is_file()
    after = trainer.adapter.policy.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in trainer.adapter.policy.parameters())


def test_offline_data_for_a_re_encoding_action_critic_is_refused_with_the_fix(trained_pixel_base):
    """The action critic re-encodes stored observations on a VLA base; offline transitions keep none, so offline data
    is refused there (before any rollout), naming what works."""
    tmp_path, _, _, _ = trained_pixel_base
    recipe = pixel_recipe(tmp_path, algorithm={"critic": "action"}, train={"output_dir": str(tmp_path / "refused")})
    recipe = recipe_from_dict({**recipe, "offline": {"dataset": "demos"}})
    with pytest.raises(ValueError, match="offline.dataset with lpds on a SmolVLAAdapter base is not supported yet"):
        SteeringTrainer(recipe)
    assert not (tmp_path / "refused" / "metrics.jsonl").exists()


@pytest.mark.parametrize("algorithm", [{"name": "dsrl_na"}, {"name": "lpds", "critic": "action"}])
def test_action_critics_on_the_toy_smolvla_learn_on_held_out_transitions(tmp_path, algorithm):
    """The toy SmolVLA's KV cache is not stored: DSRL-NA and LP-DS's action critic train on stored 32 px frames (kept
    as uint8, exactly) re-encoded in every update, and Q^A's TD loss on held-out transitions falls."""
    recipe = pixel_recipe(tmp_path, env={"reward_mode": "dense_minus_one", "reward_scale": 10.0},
                          train={"total_env_steps": 480, "warmup_env_steps": 480, "eval_every": 480, "checkpoint_every": 480})
    # gamma 0.5: Q's targets settle within a few hundred updates
    recipe = recipe_from_dict({**recipe, "algorithm": {**algorithm, "batch_size": 32, "gamma": 0.5}})
    trainer = SteeringTrainer(recipe)
    trainer.run()  # warm-up only: prior-noise transitions
    stored = trainer.buffer.storage
    assert stored[f"obs_u8/{IMAGE_KEY}"].dtype == torch.uint8 and "decode_state" not in stored
    before, after = held_out_critic_losses(trainer, updates=300)
    assert 0 <= after < 0.6 * before, (before, after)
