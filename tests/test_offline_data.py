"""Offline chunk transitions from real LeRobotDatasets (vla_steer.data.offline) and offline/online batch mixing."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections import deque

import numpy as np
import pytest
import torch
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors
from lerobot.policies.utils import populate_queues

from vla_steer.adapters.lerobot_diffusion import DiffusionPolicyAdapter
from vla_steer.adapters.native import NativePolicyAdapter
from vla_steer.data.offline import offline_chunk_transitions
from vla_steer.policies import ChunkPolicyConfig, build_chunk_policy
from vla_steer.training.buffer import (
    MixedReplay, ReplayBuffer, buffer_from_transitions, mixed_batch_sizes, sample_mixed)

torch.set_num_threads(1)

STATE, ENV, A, K = 4, 3, 2, 3
# (length, terminates): with k = 3 -> 9 + 4 + 2 + 0 transitions
EPISODES = [(9, True), (7, False), (2, True), (3, False)]
REPLAY_KEYS = {"features", "latent", "action", "reward", "discount", "terminated", "next_features",
               "decode_state", "next_decode_state"}  # what Trainer.collect stores for storable contexts


def write_dataset(root, episodes=EPISODES, rewards=True, seed=0):
    features = {
        "observation.state": {"dtype": "float32", "shape": (STATE,), "names": None},
        "observation.environment_state": {"dtype": "float32", "shape": (ENV,), "names": None},
        "action": {"dtype": "float32", "shape": (A,), "names": None},
    }
    if rewards:
        features.update({"next.reward": {"dtype": "float32", "shape": (1,), "names": None},
                         "next.success": {"dtype": "bool", "shape": (1,), "names": None},
                         "next.done": {"dtype": "bool", "shape": (1,), "names": None}})
    dataset = LeRobotDataset.create(repo_id="test/offline", fps=10, features=features, root=root, use_videos=False)
    rng = np.random.default_rng(seed)
    for length, terminates in episodes:
        for i in range(length):
            end = terminates and i == length - 1
            frame = {"observation.state": rng.standard_normal(STATE).astype(np.float32),
                     "observation.environment_state": rng.standard_normal(ENV).astype(np.float32),
                     "action": rng.uniform(-2, 2, A).astype(np.float32), "task": "push"}
            if rewards:
                frame.update({"next.reward": np.array([rng.random()], np.float32),
                              "next.success": np.array([end]), "next.done": np.array([end])})
            dataset.add_frame(frame)
        dataset.save_episode()
    dataset.finalize()
    return root


def load_rows(root):
    """Every frame through LeRobot's item access (an independent read path from the one under test)."""
    dataset = LeRobotDataset(repo_id="test/offline", root=root)
    return [dataset[i] for i in range(len(dataset))]


def reference_chunks(rows, k):
    """Plain-loop reference: ``(t, executed length, terminal, next frame)`` for every kept chunk."""
    out = []
    for t, row in enumerate(rows):
        episode = int(row["episode_index"])
        length, terminal = 0, False
        for j in range(k):
            if t + j >= len(rows) or int(rows[t + j]["episode_index"]) != episode:
                break
            length += 1
            if bool(rows[t + j]["next.done"]):
                terminal = True
                break
        if terminal:
            out.append((t, length, True, t + length - 1))
        elif length == k and t + k < len(rows) and int(rows[t + k]["episode_index"]) == episode:
            out.append((t, k, False, t + k))
    return out


def native_adapter(k=K):
    policy = build_chunk_policy(ChunkPolicyConfig(type="flow", obs_dim=STATE, action_dim=A, horizon=4,
                                                  n_action_steps=k, hidden_dim=16, num_layers=1))
    policy.set_stats(torch.linspace(-1, 1, STATE), torch.linspace(0.5, 2, STATE), -2 * torch.ones(A), 2 * torch.ones(A))
    return NativePolicyAdapter(policy)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("offline") / "ds")


@pytest.mark.parametrize("discount_mode", ["chunk", "env_step"])
def test_chunk_rewards_terminals_and_dropped_truncated_ends(dataset_root, discount_mode):
    adapter, gamma = native_adapter(), 0.9
    out = offline_chunk_transitions(
        dataset_root, n_action_steps=K, n_obs_steps=1, gamma=gamma, discount_mode=discount_mode,
        to_policy_batch=None, encode=adapter.encode, normalize_action=adapter.policy.normalize_actions,
        latent_dim=7, batch_size=4, show_progress=False)
    rows = load_rows(dataset_root)
    chunks = reference_chunks(rows, K)
    assert len(chunks) == 9 + 4 + 2 + 0  # truncated ends dropped; the 3-frame truncated episode gives nothing
    assert set(out) == REPLAY_KEYS
    assert out["action"].shape == (len(chunks), K * A) and out["latent"].shape == (len(chunks), 7)
    assert not out["latent"].any()
    for i, (t, length, terminal, nxt) in enumerate(chunks):
        reward = sum(float(rows[t + j]["next.reward"]) for j in range(length))
        torch.testing.assert_close(out["reward"][i], torch.tensor(reward), rtol=0, atol=1e-6)
        assert out["terminated"][i] == float(terminal)
        expected_discount = gamma if discount_mode == "chunk" else gamma ** length
        torch.testing.assert_close(out["discount"][i], torch.tensor(expected_discount), rtol=1e-6, atol=0)
        executed = [rows[t + min(j, length - 1)]["action"] for j in range(K)]  # padded with the last executed row
        torch.testing.assert_close(out["action"][i], adapter.policy.normalize_actions(torch.stack(executed)).flatten())
        obs, next_obs = rows[t]["observation.state"][None], rows[nxt]["observation.state"][None]
        torch.testing.assert_close(out["features"][i], adapter.encode(obs).features[0])
        torch.testing.assert_close(out["next_features"][i], adapter.encode(next_obs).features[0])
        torch.testing.assert_close(out["decode_state"][i], out["features"][i])
        torch.testing.assert_close(out["next_decode_state"][i], out["next_features"][i])
    # the terminal short chunks at the end of episode 0 (frames 7, 8): 2 and 1 executed rows
    assert [c[1:3] for c in chunks[7:9]] == [(2, True), (1, True)]


def tiny_diffusion_policy(n_action_steps=K) -> DiffusionPolicy:
    config = DiffusionConfig(
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (STATE,)),
                        "observation.environment_state": PolicyFeature(FeatureType.ENV, (ENV,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (A,))},
        n_obs_steps=2, horizon=8, n_action_steps=n_action_steps, down_dims=(16, 32), kernel_size=3, n_groups=4,
        diffusion_step_embed_dim=16, device="cpu")
    torch.manual_seed(0)
    return DiffusionPolicy(config)


def test_observation_history_matches_lerobot_queues(dataset_root):
    """n_obs_steps = 2 through LeRobot's own preprocessor: each transition's features equal an encode of what
    DiffusionPolicy's queues hold at that step (populate_queues fed one processed frame per env step)."""
    policy = tiny_diffusion_policy()
    adapter = DiffusionPolicyAdapter(policy, num_inference_steps=4)
    stats = LeRobotDataset(repo_id="test/offline", root=dataset_root).meta.stats
    preprocessor, _ = make_diffusion_pre_post_processors(policy.config, dataset_stats=stats)
    out = offline_chunk_transitions(
        dataset_root, n_action_steps=K, n_obs_steps=2, gamma=0.99, discount_mode="chunk",
        to_policy_batch=preprocessor, encode=adapter.encode, normalize_action=None, latent_dim=3, batch_size=5,
        show_progress=False)
    assert out["features"].shape[1] == adapter.feature_dim == 2 * (STATE + ENV)

    rows = load_rows(dataset_root)
    keys = ("observation.state", "observation.environment_state")
    queue_features, queues, episode = [], None, None
    for row in rows:  # LeRobot's per-step queue filling, reset at every episode start
        if int(row["episode_index"]) != episode:
            episode, queues = int(row["episode_index"]), {key: deque(maxlen=2) for key in keys}
        processed = preprocessor({key: row[key][None] for key in keys} | {"task": [row["task"]]})
        populate_queues(queues, processed)
        batch = {key: torch.stack(list(queues[key]), dim=1) for key in keys}
        queue_features.append(adapter.encode(batch).features[0])
    chunks = reference_chunks(rows, K)
    for i, (t, _, _, nxt) in enumerate(chunks):
        torch.testing.assert_close(out["features"][i], queue_features[t], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out["next_features"][i], queue_features[nxt], rtol=1e-5, atol=1e-5)
    # at an episode start the history repeats the first frame: differs from a history with the previous episode
    first_of_episode1 = next(i for i, c in enumerate(chunks) if int(rows[c[0]]["episode_index"]) == 1)
    first_frame = preprocessor({key: rows[9][key][None] for key in keys} | {"task": ["push"]})
    single = adapter.encode({key: first_frame[key] for key in keys})  # [1, ...]: repeated n_obs_steps times
    torch.testing.assert_close(out["features"][first_of_episode1], single.features[0], rtol=1e-5, atol=1e-5)
    previous = preprocessor({key: rows[8][key][None] for key in keys} | {"task": ["push"]})  # episode 0's last
    crossing = adapter.encode({key: torch.stack([previous[key], first_frame[key]], dim=1) for key in keys})
    assert not torch.allclose(out["features"][first_of_episode1], crossing.features[0], atol=1e-3)


def test_generated_demonstrations_round_trip(tmp_path):
    """Scripted metaworld demos (vla_steer.data.demos) -> transitions; truncated episodes drop their last chunks."""
    from vla_steer.data.demos import generate_demonstrations

    root = generate_demonstrations("metaworld/push-v3", num_episodes=2, action_noise=0.3, seed=0,
                                   max_episode_steps=30, cache_dir=tmp_path, show_progress=False)
    rows = load_rows(root)
    obs_dim, k = rows[0]["observation.state"].shape[0], 4
    policy = build_chunk_policy(ChunkPolicyConfig(type="diffusion", obs_dim=obs_dim, action_dim=4, horizon=4,
                                                  n_action_steps=k, hidden_dim=16, num_layers=1))
    adapter = NativePolicyAdapter(policy)
    out = offline_chunk_transitions(root, n_action_steps=k, n_obs_steps=1, gamma=0.99, discount_mode="env_step",
                                    to_policy_batch=None, encode=adapter.encode, normalize_action=None, latent_dim=4,
                                    show_progress=False)
    chunks = reference_chunks(rows, k)
    assert len(chunks) == out["reward"].shape[0]
    expected = torch.tensor([sum(float(rows[t + j]["next.reward"]) for j in range(n)) for t, n, _, _ in chunks])
    torch.testing.assert_close(out["reward"], expected, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(out["terminated"], torch.tensor([float(c[2]) for c in chunks]))
    if not any(c[2] for c in chunks):  # both episodes hit the time limit: the last k frames of each are dropped
        assert len(chunks) == len(rows) - 2 * k


def test_missing_reward_columns_are_refused(tmp_path):
    root = write_dataset(tmp_path / "no_rewards", rewards=False)
    adapter = native_adapter()
    with pytest.raises(ValueError, match=r"next\.reward, next\.done.*record_rollouts"):
        offline_chunk_transitions(root, n_action_steps=K, n_obs_steps=1, gamma=0.99, discount_mode="chunk",
                                  to_policy_batch=None, encode=adapter.encode, normalize_action=None, latent_dim=2,
                                  show_progress=False)


# -- mixing -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def offline_and_online(dataset_root):
    adapter = native_adapter()
    offline = offline_chunk_transitions(
        dataset_root, n_action_steps=K, n_obs_steps=1, gamma=0.99, discount_mode="chunk", to_policy_batch=None,
        encode=adapter.encode, normalize_action=adapter.policy.normalize_actions, latent_dim=5, show_progress=False)
    online = {key: value.clone() for key, value in offline.items()}
    online["reward"] += 100.0  # marks online rows
    online["latent"] = torch.randn_like(online["latent"])
    online_buffer = ReplayBuffer(64)
    online_buffer.add(online)
    return buffer_from_transitions(offline), online_buffer


def test_mixed_batches_have_fixed_fractions_offline_first(offline_and_online):
    offline, online = offline_and_online
    for fraction, n_offline in [(0.0, 0), (0.25, 5), (0.5, 10), (0.3, 6), (1.0, 20)]:
        batch = sample_mixed(online, offline, 20, fraction, torch.Generator().manual_seed(1))
        from_online = batch["reward"] >= 100
        assert from_online.tolist() == [False] * n_offline + [True] * (20 - n_offline)
        assert set(batch) == REPLAY_KEYS and batch["action"].shape == (20, K * A)
        assert not batch["latent"][:n_offline].any()
    assert mixed_batch_sizes(7, 0.5, online_size=3) == (4, 3)  # half rounds up
    # an empty online buffer: everything offline
    batch = sample_mixed(ReplayBuffer(8), offline, 12, 0.25, torch.Generator().manual_seed(0))
    assert (batch["reward"] < 100).all() and batch["reward"].shape == (12,)


def test_mixed_sampling_is_deterministic_and_checked(offline_and_online):
    offline, online = offline_and_online
    draw = lambda seed: sample_mixed(online, offline, 16, 0.5, torch.Generator().manual_seed(seed))  # noqa: E731
    first, again, other = draw(3), draw(3), draw(4)
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["reward"], other["reward"])
    mixed = MixedReplay(online, offline, 0.5)
    assert len(mixed) == len(online)
    via_class = mixed.sample(16, torch.Generator().manual_seed(3))
    assert all(torch.equal(first[key], via_class[key]) for key in first)
    state = online.state_dict()  # the online buffer's checkpoint format is untouched by mixing
    assert set(state) == {"tensors", "ptr", "size", "capacity"}

    with pytest.raises(ValueError, match="offline_fraction"):
        sample_mixed(online, offline, 16, 1.5)
    with pytest.raises(ValueError, match="offline_fraction"):
        MixedReplay(online, offline, -0.1)
    with pytest.raises(RuntimeError, match="offline buffer is empty"):
        sample_mixed(online, ReplayBuffer(4), 16, 0.5)
    other_keys = ReplayBuffer(4)
    other_keys.add({"features": torch.zeros(2, 3)})
    with pytest.raises(KeyError, match="differ"):
        sample_mixed(online, other_keys, 16, 0.5)


def test_raw_demonstration_rewards_are_shaped_and_cut_at_success_like_the_training_envs(tmp_path):
    """Scripted demonstrations hold the env's raw rewards and run past success; as offline data for a recipe with
    reward_mode sparse / dense_minus_one and terminate_on_success they must look like the training envs' transitions."""
    features = {"observation.state": {"dtype": "float32", "shape": (STATE,), "names": None},
                "action": {"dtype": "float32", "shape": (A,), "names": None},
                "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
                "next.success": {"dtype": "bool", "shape": (1,), "names": None},
                "next.done": {"dtype": "bool", "shape": (1,), "names": None}}
    dataset = LeRobotDataset.create(repo_id="test/raw", fps=10, features=features, root=tmp_path / "raw", use_videos=False)
    for i in range(8):  # success at frame 3, the episode goes on (as a scripted demonstration does)
        dataset.add_frame({"observation.state": np.full(STATE, i, np.float32), "action": np.zeros(A, np.float32),
                           "next.reward": np.array([10.0 * (i + 1)], np.float32), "next.success": np.array([i >= 3]),
                           "next.done": np.array([False]), "task": "push"})
    dataset.save_episode()
    dataset.finalize()
    adapter = native_adapter()
    convert = lambda shaping: offline_chunk_transitions(  # noqa: E731
        tmp_path / "raw", n_action_steps=K, n_obs_steps=1, gamma=0.9, discount_mode="chunk", to_policy_batch=None,
        encode=adapter.encode, normalize_action=None, latent_dim=2, show_progress=False, reward_shaping=shaping)
    raw = convert(None)
    assert len(raw["reward"]) == 5 and not raw["terminated"].any()  # frames 0..4 start full chunks
    sparse = convert({"mode": "sparse", "scale": 1.0, "terminate_on_success": True})
    # chunks from frames 0..3 only: frame 3's success ends the episode there
    assert sparse["reward"].tolist() == [-3.0, -2.0, -1.0, 0.0] and sparse["terminated"].tolist() == [0, 1, 1, 1]
    dense = convert({"mode": "dense_minus_one", "scale": 10.0, "terminate_on_success": False})
    torch.testing.assert_close(dense["reward"], raw["reward"] / 10.0 - K)  # sum over k rows of r / 10 - 1
