import numpy as np
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from vla_steer.data import generate_demonstrations, load_demonstrations
from vla_steer.policies import ChunkPolicyConfig, load_chunk_policy
from vla_steer.policies.bc import train_bc


def test_bc_trains_on_dataset_made_with_lerobot_api(tmp_path):
    """A LeRobotDataset written directly with LeRobot's API (not our generator): BC must fit it."""
    rng = np.random.default_rng(0)
    features = {"observation.state": {"dtype": "float32", "shape": (3,), "names": None},
                "action": {"dtype": "float32", "shape": (2,), "names": None}}
    ds = LeRobotDataset.create(repo_id="test/linear", fps=10, features=features, root=tmp_path / "ds", use_videos=False)
    for _ in range(4):
        for _ in range(25):
            s = rng.uniform(-1, 1, 3).astype(np.float32)
            ds.add_frame({"observation.state": s, "action": np.array([s[0], -s[1]], np.float32), "task": "linear"})
        ds.save_episode()
    ds.finalize()

    cfg = ChunkPolicyConfig(type="flow", obs_dim=3, action_dim=2, horizon=1, n_action_steps=1, hidden_dim=64,
                            num_layers=2, num_inference_steps=10)
    policy = train_bc(cfg, tmp_path / "ds", steps=600, batch_size=64, lr=1e-3, output_dir=tmp_path / "bc", show_progress=False)
    obs = torch.tensor([[0.5, 0.5, 0.0], [-0.5, 0.2, 0.3]])
    torch.manual_seed(0)
    pred = policy.predict_action_chunk(obs)[:, 0]
    torch.testing.assert_close(pred, torch.stack([obs[:, 0], -obs[:, 1]], -1), atol=0.2, rtol=0)
    reloaded = load_chunk_policy(tmp_path / "bc")
    w = torch.randn(2, 1, 2)
    assert torch.equal(reloaded.predict_action_chunk(obs, noise=w), policy.predict_action_chunk(obs, noise=w))


def test_demos_are_lerobot_datasets_and_cached(tmp_path):
    kwargs = dict(num_episodes=2, action_noise=0.1, seed=0, max_episode_steps=60, cache_dir=tmp_path, show_progress=False)
    root = generate_demonstrations("LunarLanderContinuous-v3", **kwargs)
    ds = LeRobotDataset(repo_id="local/x", root=root)
    assert ds.num_episodes == 2 and {"observation.state", "action", "next.reward", "next.success"} <= set(ds.features)
    stamp = (root / "meta" / "info.json").stat().st_mtime_ns
    assert generate_demonstrations("LunarLanderContinuous-v3", **kwargs) == root
    assert (root / "meta" / "info.json").stat().st_mtime_ns == stamp, "a cached dataset must not be rewritten"
    assert not list(tmp_path.glob("*.partial"))
    arrays = load_demonstrations(root)
    chunks, pad = arrays.action_chunks(4)
    assert chunks.shape == (len(arrays.actions), 4, 2)
    last = int((arrays.episode_index == 0).sum()) - 1  # last frame of episode 0: 3 padded steps
    assert pad[last].tolist() == [False, True, True, True]
    assert torch.equal(chunks[last, 3], arrays.actions[last])
