"""The pieces every method's learning rests on, each against a value worked out by hand: the chunk wrapper's reward
sum and early stop, the TD target (termination vs truncation, per-chunk vs per-env-step discount), the final
observation at autoreset, success counting, the k-NN entropy against a Gaussian's closed form, and DSRL-NA's
distillation target."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from accelerate import Accelerator

from vla_steer.adapters import NativePolicyAdapter
from vla_steer.adapters.base import LatentLayout
from vla_steer.algorithms import algorithm_config, build_algorithm
from vla_steer.config import HeadConfig, recipe_from_dict
from vla_steer.envs.registry import ActionChunk
from vla_steer.metrics import kozachenko_leonenko_entropy
from vla_steer.pipeline import ensure_base
from vla_steer.policies import ChunkPolicyConfig, build_chunk_policy
from vla_steer.training import SteeringTrainer
from vla_steer.training.collector import EpisodeTracker, chunk_discount, step_info, with_final_observations

OBS_DIM = 8  # the tiny recipe's base is cloned on LunarLander (8-d observations, 2-d actions)


class Scripted(gym.Env):
    """Observation [step, episode, 0 ...]; the reward of step t (1-based) is t; ``is_success`` at step
    ``success_at``; terminates at step ``terminate_at`` (None: only the time limit ends it)."""

    def __init__(self, terminate_at=None, success_at=None):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.terminate_at, self.success_at = terminate_at, success_at
        self.t, self.episode = 0, -1

    def _obs(self):
        return np.array([self.t, self.episode] + [0.0] * (OBS_DIM - 2), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.episode = 0, self.episode + 1
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        terminated = self.terminate_at is not None and self.t >= self.terminate_at
        return self._obs(), float(self.t), terminated, False, {"is_success": self.t == self.success_at}


def chunked(n_steps=3, max_episode_steps=None, **kwargs):
    env = Scripted(**kwargs)
    if max_episode_steps is not None:
        env = gym.wrappers.TimeLimit(env, max_episode_steps)
    return ActionChunk(env, n_steps)


def test_a_chunk_sums_its_rewards_stops_early_and_reports_success_of_any_step():
    env = chunked(n_steps=3, terminate_at=5, success_at=2)
    env.reset()
    obs, reward, terminated, truncated, info = env.step(np.zeros((3, 2)))
    assert (reward, terminated, info["chunk_steps"], info["is_success"]) == (1 + 2 + 3, False, 3, True)
    obs, reward, terminated, truncated, info = env.step(np.zeros((3, 2)))  # steps 4, 5: terminates after 2 rows
    assert (reward, terminated, truncated, info["chunk_steps"], info["is_success"]) == (4 + 5, True, False, 2, False)
    assert obs[0] == 5


def test_the_final_observation_and_info_of_a_finished_episode_survive_autoreset():
    envs = gym.vector.SyncVectorEnv([lambda: chunked(n_steps=2, max_episode_steps=3, success_at=3),
                                     lambda: chunked(n_steps=2, terminate_at=10)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    envs.reset(seed=0)
    envs.step(np.zeros((2, 2, 2)))
    next_obs, reward, terminated, truncated, info = envs.step(np.zeros((2, 2, 2)))  # env 0: step 3 hits the limit
    done = terminated | truncated
    assert done.tolist() == [True, False] and truncated[0] and not terminated[0]
    assert next_obs[0][:2].tolist() == [0, 1]  # already the next episode's first observation
    stored = with_final_observations(next_obs, info, done)
    assert stored[0][:2].tolist() == [3, 0] and stored[1][:2].tolist() == [4, 0]  # the true next observations
    assert step_info(info, done, "chunk_steps").tolist() == [1, 2]
    assert step_info(info, done, "is_success").tolist() == [1, 0]
    assert reward.tolist() == [3, 3 + 4]


def test_chunk_discount_per_chunk_and_per_env_step():
    steps = np.array([3, 1])
    assert chunk_discount(0.9, steps, "chunk").tolist() == pytest.approx([0.9, 0.9])
    assert chunk_discount(0.9, steps, "env_step").tolist() == pytest.approx([0.729, 0.9])


def test_the_td_target_bootstraps_through_truncation_but_not_termination():
    algo, _ = _dsrl_na()
    batch = {"reward": torch.tensor([1.0, 1.0]), "discount": torch.tensor([0.9, 0.9]),
             "terminated": torch.tensor([1.0, 0.0])}
    assert algo.td_target(batch, torch.tensor([10.0, 10.0])).tolist() == pytest.approx([1.0, 1.0 + 0.9 * 10.0])


def test_success_is_counted_once_per_episode_if_any_chunk_succeeded():
    tracker = EpisodeTracker(num_envs=3)
    active = np.array([True, True, False])
    tracker.update(np.array([1.0, 1.0, 5.0]), np.array([False, False, True]), np.array([2, 2, 2]),
                   np.array([True, False, True]), active)
    ended = tracker.update(np.array([1.0, 2.0, 5.0]), np.array([True, True, True]), np.array([1, 2, 2]),
                           np.array([False, False, True]), active)
    assert ended.tolist() == [0, 1]  # the inactive env is not counted
    assert tracker.episodes == {"return": [2.0, 3.0], "success": [True, False], "length": [3, 4]}


@pytest.mark.parametrize("dim, sigma", [(1, 1.0), (4, 0.5), (16, 2.0)])
def test_knn_entropy_matches_a_gaussians_closed_form(dim, sigma):
    samples = sigma * torch.randn(4000, dim, generator=torch.Generator().manual_seed(dim))
    exact = 0.5 * dim * math.log(2 * math.pi * math.e * sigma ** 2)
    assert kozachenko_leonenko_entropy(samples).item() == pytest.approx(exact, abs=0.05 * dim + 0.05)


def _dsrl_na(seed: int = 0):
    torch.manual_seed(seed)
    policy = build_chunk_policy(ChunkPolicyConfig(type="flow", obs_dim=3, action_dim=2, horizon=2, n_action_steps=2,
                                                  hidden_dim=32, num_layers=2, num_inference_steps=2))
    adapter = NativePolicyAdapter(policy)
    algo = build_algorithm(algorithm_config("dsrl_na", batch_size=128), HeadConfig(hidden_dim=64, num_layers=2),
                           adapter, LatentLayout("full", adapter.noise_shape), Accelerator(cpu=True))
    return algo, adapter


def test_dsrl_na_distils_the_action_critic_through_the_decoder():
    """Q^W(s, z) must learn Q^A(s, decode(s, z)) for prior latents z (the action critic held fixed)."""
    algo, adapter = _dsrl_na()
    context = adapter.encode(torch.randn(128, 3))
    batch = {"features": context.features, "decode_state": context.decode_state}

    def gap() -> tuple[float, float]:
        z = algo.prior_latent(1024)
        s = context.features.repeat(8, 1)
        with torch.no_grad():
            target = algo.action_critic(s, algo.decode_executed(s, context.decode_state.repeat(8, 1), z))
            return (algo.noise_critic(s, z) - target).pow(2).mean().item(), target.var().item()

    before, variance = gap()
    for _ in range(400):
        z = algo.prior_latent(128)
        algo.distill(batch, [(z, algo.decode_stored(batch, [z])[0][0])])
    after, _ = gap()
    assert after < 0.1 * before and after < 0.2 * variance, (before, after, variance)


@pytest.fixture(scope="module")
def scripted_trainer(tmp_path_factory):
    from conftest import tiny_recipe_dict

    if "vla_steer_test/Scripted-v0" not in gym.registry:
        gym.register("vla_steer_test/Scripted-v0", entry_point=Scripted)
    root = tmp_path_factory.mktemp("scripted")
    base = ensure_base(recipe_from_dict(tiny_recipe_dict(root)), show_progress=False)
    recipe = recipe_from_dict(tiny_recipe_dict(root, env={"id": "vla_steer_test/Scripted-v0", "num_envs": 1,
                                                          "max_episode_steps": None,
                                                          "kwargs": {"terminate_at": 5, "success_at": 5}},
                                               base={"path": str(base)}, algorithm={"name": "dsrl_na", "batch_size": 32,
                                                                                    "discount_mode": "env_step"}))
    return SteeringTrainer(recipe)


def test_the_collector_stores_the_true_next_state_sum_and_discount_of_a_cut_chunk(scripted_trainer):
    """Two rows per chunk, termination after step 5: the third chunk runs one row (reward 5, discount gamma^1,
    terminated) and its next state is the final observation, not the reset one the env moved on to."""
    trainer = scripted_trainer
    trainer.collector.reset(0)
    rows = [trainer.collector.step(trainer.choose_latent(warm=True), 0.9, "env_step") for _ in range(3)]
    assert [r["reward"].item() for r in rows] == [1 + 2, 3 + 4, 5]
    assert [r["discount"].item() for r in rows] == pytest.approx([0.81, 0.81, 0.9])
    assert [r["terminated"].item() for r in rows] == [0, 0, 1]
    final = trainer.collector.encode(np.array([[5, 0] + [0] * (OBS_DIM - 2)], np.float32))
    restarted = trainer.collector.encode(np.array([[0, 1] + [0] * (OBS_DIM - 2)], np.float32))
    torch.testing.assert_close(rows[2]["next_features"], final.features)
    assert not torch.allclose(rows[2]["next_features"], restarted.features)
    torch.testing.assert_close(rows[2]["next_decode_state"], final.decode_state)
    assert trainer.collector.tracker.episodes == {"return": [15.0], "success": [True], "length": [5]}
    trainer.collector.close()


def test_energy_distance_is_zero_for_one_distribution_and_matches_a_shift_in_closed_form():
    from vla_steer.metrics import energy_distance

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3000, 1, generator=g), torch.randn(3000, 1, generator=g)
    assert abs(energy_distance(x, y).item()) < 0.02
    mu = 1.0  # N(0, 1) vs N(mu, 1): 2 E|X - Y| - 2 E|X - X'|, X - Y ~ N(-mu, 2), X - X' ~ N(0, 2)
    sd = math.sqrt(2)
    mean_abs = sd * math.sqrt(2 / math.pi) * math.exp(-mu ** 2 / (2 * sd ** 2)) + mu * math.erf(mu / (sd * math.sqrt(2)))
    exact = 2 * mean_abs - 2 * sd * math.sqrt(2 / math.pi)
    assert energy_distance(x, y + mu).item() == pytest.approx(exact, abs=0.03)


def test_a_buffer_too_large_for_memory_is_refused_before_allocating():
    """With stored observations one transition can be tens of kilobytes: a buffer_size that cannot fit is refused
    with the numbers and a size that fits, before any tensor is allocated."""
    from vla_steer.config import RecipeError
    from vla_steer.training.buffer import BufferTooLargeError, ReplayBuffer

    buffer = ReplayBuffer(10**12)
    with pytest.raises(BufferTooLargeError, match=r"train.buffer_size=1,000,000,000,000 rows x 16 bytes per transition"
                                                  r".*lower train.buffer_size \(e.g. [\d,]+"):
        buffer.add({"features": torch.zeros(2, 4)})
    assert buffer.storage == {} and issubclass(BufferTooLargeError, RecipeError)  # the CLI prints it as a recipe error
    ReplayBuffer(1000).add({"features": torch.zeros(2, 4)})  # a small one is fine


def test_the_ensemble_layer_norm_is_exactly_a_layer_norm_with_an_affine_per_member_and_saves_only_that():
    from vla_steer.steering.networks import EnsembleLayerNorm

    norm = EnsembleLayerNorm(3, 64)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    x = torch.randn(3, 32, 64, requires_grad=True)
    reference_x = x.detach().clone().requires_grad_()
    reference = torch.nn.functional.layer_norm(reference_x, (64,)) * norm.weight + norm.bias
    out, grad = norm(x), torch.randn(3, 32, 64)
    assert torch.equal(out, reference)  # bit for bit: the speed-up (an identity affine inside) changes no value
    grads = torch.autograd.grad(out, [x, norm.weight], grad)
    reference_grad = torch.autograd.grad(reference, [reference_x, norm.weight], grad)
    assert all(torch.equal(a, b) for a, b in zip(grads, reference_grad))
    assert set(norm.state_dict()) == {"weight", "bias"}  # the head format is unchanged
