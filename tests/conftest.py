import os

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

# pi0 / pi0.5 need the openpi-patched transformers, which cannot share an environment with the stock one the
# other tests use: their module is a separate CI stage (see tests/test_pi0_adapters.py), not a skip here.
collect_ignore = [] if os.environ.get("VLA_STEER_PI_ENV") == "1" else ["test_pi0_adapters.py"]


def tiny_recipe_dict(tmp_path, **sections) -> dict:
    """A fast recipe on LunarLanderContinuous-v3 (Box2D, ~14k steps/s) with a tiny base and head."""
    recipe = {
        "name": "tiny",
        "env": {"id": "LunarLanderContinuous-v3", "num_envs": 2, "max_episode_steps": 100},
        "demos": {"num_episodes": 3, "action_noise": 0.2},
        "base": {"type": "diffusion", "horizon": 4, "n_action_steps": 2, "hidden_dim": 32, "num_layers": 1,
                 "num_inference_steps": 4, "num_train_timesteps": 20, "bc_steps": 100, "bc_batch_size": 64},
        "head": {"hidden_dim": 32, "num_layers": 2, "bound": 3.0},
        "algorithm": {"name": "lpds", "batch_size": 32},
        "train": {"total_env_steps": 160, "warmup_env_steps": 40, "eval_every": 80, "eval_episodes": 2,
                  "eval_num_envs": 2, "entropy_states": 4, "entropy_draws": 8, "checkpoint_every": 40,
                  "output_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path.parent / "vla_steer_cache"),
                  "show_progress": False, "buffer_size": 10_000, "torch_threads": 1},
    }
    for section, values in sections.items():
        recipe[section] = {**recipe.get(section, {}), **values} if isinstance(values, dict) else values
    return recipe


@pytest.fixture
def tiny_recipe(tmp_path):
    return lambda **sections: tiny_recipe_dict(tmp_path, **sections)
