"""Adapters for LeRobot's DiffusionPolicy (the real class, tiny and random, built offline) and generic flow heads."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors
from tiny_common import assert_base_frozen_through_backward
from torch import nn

from vla_steer.adapters import DiffusionPolicyAdapter, FlowHeadAdapter

torch.set_num_threads(1)

STATE_DIM, ENV_DIM, ACTION_DIM, IMAGE_SHAPE = 4, 3, 2, (3, 64, 64)  # 64 px: a 2x2 ResNet map
DDIM_STEPS = 6


# ---------------------------------------------------------------------------------------------------------
# LeRobot DiffusionPolicy


def tiny_diffusion_policy(cameras: int = 0) -> DiffusionPolicy:
    """State + environment state (LeRobot requires images or an environment state), optionally small cameras.

    The config keeps LeRobot's default DDPM scheduler, so the adapter's switch to DDIM is part of every test.
    """
    inputs = {"observation.state": PolicyFeature(FeatureType.STATE, (STATE_DIM,))}
    if cameras:
        inputs.update({f"observation.images.cam{i}": PolicyFeature(FeatureType.VISUAL, IMAGE_SHAPE)
                       for i in range(cameras)})
    else:
        inputs["observation.environment_state"] = PolicyFeature(FeatureType.ENV, (ENV_DIM,))
    config = DiffusionConfig(
        input_features=inputs,
        output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
        n_obs_steps=2, horizon=8, n_action_steps=4,
        down_dims=(16, 32), kernel_size=3, n_groups=4, diffusion_step_embed_dim=16,
        spatial_softmax_num_keypoints=4, device="cpu",
    )
    torch.manual_seed(0)
    return DiffusionPolicy(config)


def observation(policy: DiffusionPolicy, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """One step of observations ``[B, *shape]`` for every input feature of ``policy``."""
    g = torch.Generator().manual_seed(seed)
    obs = {}
    for key, feature in policy.config.input_features.items():
        draw = torch.rand if feature.type is FeatureType.VISUAL else torch.randn
        obs[key] = draw((batch, *feature.shape), generator=g)
    return obs


def lerobot_chunk(policy: DiffusionPolicy, steps: list[dict], noise: torch.Tensor) -> torch.Tensor:
    """The chunk LeRobot's own ``select_action`` executes after seeing ``steps``, sampling from ``noise``.

    Earlier steps only fill the observation queues: their action queue is used up before the last step comes.
    """
    policy.reset()
    for obs in steps[:-1]:
        for _ in range(policy.config.n_action_steps):
            policy.select_action(dict(obs))
    first = policy.select_action(dict(steps[-1]), noise=noise)  # samples a new chunk from `noise`
    rest = [policy.select_action(dict(steps[-1])) for _ in range(policy.config.n_action_steps - 1)]
    return torch.stack([first, *rest], dim=1)


@pytest.fixture(params=[0, 2], ids=["state", "2cams"])
def diffusion(request):
    return DiffusionPolicyAdapter(tiny_diffusion_policy(cameras=request.param), num_inference_steps=DDIM_STEPS)


def test_policy_is_switched_to_deterministic_ddim(diffusion):
    policy = diffusion.policy
    assert isinstance(policy.diffusion.noise_scheduler, DDIMScheduler)
    assert policy.config.noise_scheduler_type == "DDIM"
    assert policy.diffusion.num_inference_steps == policy.config.num_inference_steps == DDIM_STEPS
    assert len(diffusion.scheduler.timesteps) == DDIM_STEPS
    assert diffusion.noise_shape == (8, ACTION_DIM) and diffusion.n_action_steps == 4
    obs = observation(policy, 3, seed=1)
    ctx = diffusion.encode(obs)
    assert ctx.storable and ctx.decode_state is ctx.features
    assert ctx.features.shape == (3, diffusion.feature_dim)
    for key in policy.config.image_features:  # each camera must reach the features (not a degenerate encoder)
        changed = diffusion.encode({**obs, key: torch.rand_like(obs[key])}).features
        assert not torch.allclose(changed, ctx.features)
    with pytest.raises(ValueError, match="num_inference_steps"):
        DiffusionPolicyAdapter(tiny_diffusion_policy(), num_inference_steps=101)


def test_decode_matches_lerobot_select_action(diffusion):
    """(a) the adapter returns exactly the chunk LeRobot's public API returns for the same noise."""
    obs = observation(diffusion.policy, 3, seed=1)
    w = torch.randn(3, *diffusion.noise_shape, generator=torch.Generator().manual_seed(2))
    ours = diffusion.decode(diffusion.encode(obs), w)
    assert ours.shape == (3, diffusion.n_action_steps, ACTION_DIM)
    torch.testing.assert_close(ours, lerobot_chunk(diffusion.policy, [obs], w), rtol=0, atol=1e-5)
    # the slice is rows n_obs_steps - 1 onwards of the denoised horizon, as in generate_actions
    with torch.no_grad():
        horizon = diffusion.decode_chunk(diffusion.encode(obs), w)
    assert horizon.shape == (3, 8, ACTION_DIM)
    torch.testing.assert_close(ours, horizon[:, 1:5], rtol=0, atol=0)


def test_observation_history_matches_lerobot_queues(diffusion):
    """A ``[B, n_obs_steps, ...]`` history encodes like LeRobot's queues after two different steps."""
    older, newer = observation(diffusion.policy, 2, seed=3), observation(diffusion.policy, 2, seed=4)
    history = {key: torch.stack([older[key], newer[key]], dim=1) for key in older}
    w = torch.randn(2, *diffusion.noise_shape, generator=torch.Generator().manual_seed(5))
    ours = diffusion.decode(diffusion.encode(history), w)
    torch.testing.assert_close(ours, lerobot_chunk(diffusion.policy, [older, newer], w), rtol=0, atol=1e-5)
    single = diffusion.decode(diffusion.encode(newer), w)
    assert not torch.allclose(ours, single), "the older step must matter"
    with pytest.raises(ValueError, match="observation.state"):
        diffusion.encode({**history, "observation.state": torch.randn(2, 3, STATE_DIM)})


def test_decode_is_deterministic_in_noise(diffusion):
    """(b) same noise, same actions, whatever the global RNG does; different noise, different actions."""
    obs = observation(diffusion.policy, 4, seed=6)
    w = torch.randn(4, *diffusion.noise_shape)
    torch.manual_seed(100)
    first = diffusion.decode(diffusion.encode(obs), w)
    torch.manual_seed(200)
    second = diffusion.decode(diffusion.encode(obs), w.clone())
    assert torch.equal(first, second)
    other = diffusion.decode(diffusion.encode(obs), torch.randn_like(w))
    assert not torch.allclose(first, other, atol=1e-3), "different noise must give different actions"


def test_k_draws_share_one_encode(diffusion):
    """(c) ``repeat_context`` + one batched decode equals ``k`` separate decodes."""
    obs, k = observation(diffusion.policy, 2, seed=7), 3
    w = torch.randn(2 * k, *diffusion.noise_shape)
    batched = diffusion.decode(diffusion.repeat_context(diffusion.encode(obs), k), w)
    for i in range(2):
        ctx_i = diffusion.encode({key: value[i:i + 1] for key, value in obs.items()})
        for j in range(k):
            one = diffusion.decode(ctx_i, w[i * k + j:i * k + j + 1])
            torch.testing.assert_close(batched[i * k + j:i * k + j + 1], one, rtol=0, atol=1e-5)


def test_encoder_runs_once_per_encode_and_never_in_decode(diffusion, monkeypatch):
    """(d) counts calls of the global-conditioning builder, the camera encoder and the U-Net."""
    model = diffusion.policy.diffusion
    calls = {"global_cond": 0, "rgb": 0, "unet": 0}
    original = model._prepare_global_conditioning

    def counting_prepare(batch):
        calls["global_cond"] += 1
        return original(batch)

    monkeypatch.setattr(model, "_prepare_global_conditioning", counting_prepare)
    hooks = [model.unet.register_forward_hook(lambda *_: calls.__setitem__("unet", calls["unet"] + 1))]
    if diffusion.policy.config.image_features:
        hooks.append(model.rgb_encoder.register_forward_hook(lambda *_: calls.__setitem__("rgb", calls["rgb"] + 1)))
    try:
        obs = observation(diffusion.policy, 2, seed=8)
        ctx = diffusion.encode(obs)
        assert calls["global_cond"] == 1 and calls["unet"] == 0
        assert calls["rgb"] == (1 if diffusion.policy.config.image_features else 0)  # all cameras, one pass
        for _ in range(3):
            diffusion.decode(ctx, torch.randn(2, *diffusion.noise_shape))
        assert calls["global_cond"] == 1 and calls["rgb"] == (1 if diffusion.policy.config.image_features else 0)
        assert calls["unet"] == 3 * DDIM_STEPS
    finally:
        for hook in hooks:
            hook.remove()


def test_base_stays_frozen_through_backward(diffusion):
    """(e) a backward through decode reaches the noise but leaves the policy untouched."""
    assert_base_frozen_through_backward(diffusion, observation(diffusion.policy, 2, seed=9),
                                        torch.randn(2, *diffusion.noise_shape))


def test_processors_around_the_adapter_give_env_space_actions():
    """LeRobot's preprocessor before ``encode`` and postprocessor after ``decode`` map raw observations to the
    unnormalised actions LeRobot's own pipeline gives; the adapter alone stays in the normalised space."""
    policy = tiny_diffusion_policy()
    stats = {
        "observation.state": {"min": -2 * torch.ones(STATE_DIM), "max": 3 * torch.ones(STATE_DIM)},
        "observation.environment_state": {"min": -torch.ones(ENV_DIM), "max": torch.ones(ENV_DIM)},
        "action": {"min": torch.tensor([0.0, -5.0]), "max": torch.tensor([1.0, 5.0])},
    }
    preprocessor, postprocessor = make_diffusion_pre_post_processors(policy.config, dataset_stats=stats)
    adapter = DiffusionPolicyAdapter(policy, num_inference_steps=DDIM_STEPS)
    obs = observation(policy, 3, seed=10)
    w = torch.randn(3, *adapter.noise_shape)
    processed = preprocessor(dict(obs))
    normalised = adapter.decode(adapter.encode(processed), w)
    actions = postprocessor(normalised)
    torch.testing.assert_close(actions, postprocessor(lerobot_chunk(policy, [processed], w)), rtol=0, atol=1e-5)
    assert normalised.abs().max() <= 1.0 + 1e-6  # clip_sample keeps DDIM's estimate in [-1, 1]
    assert (actions[..., 0] >= -1e-5).all() and (actions[..., 0] <= 1 + 1e-5).all()
    assert not torch.allclose(actions, normalised)


def test_encode_rejects_flat_tensors(diffusion):
    with pytest.raises(TypeError, match="dict of tensors"):
        diffusion.encode(torch.randn(2, STATE_DIM))
    with pytest.raises(ValueError, match="noise must be"):
        diffusion.decode(diffusion.encode(observation(diffusion.policy, 2, seed=11)), torch.randn(2, 4, ACTION_DIM))


# ---------------------------------------------------------------------------------------------------------
# generic flow head

OBS_DIM, COND_DIM, CHUNK, PADDED_DIM, REAL_DIM = 5, 6, 4, 3, 2


class TinyVelocity(nn.Module):
    """An MLP velocity field over the flattened chunk, the time and the conditioning."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(CHUNK * PADDED_DIM + 1 + COND_DIM, 32), nn.Tanh(),
                                 nn.Linear(32, CHUNK * PADDED_DIM))

    def forward(self, x, t, cond):
        out = self.net(torch.cat([x.flatten(1), t[:, None], cond], dim=1))
        return out.view_as(x)


def make_flow_head(num_steps=5, **kwargs):
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(OBS_DIM, COND_DIM), nn.Tanh())
    return FlowHeadAdapter(TinyVelocity(), encoder, noise_shape=(CHUNK, PADDED_DIM), feature_dim=COND_DIM,
                           num_steps=num_steps, n_action_steps=2, action_dim=REAL_DIM, **kwargs)


def test_flow_head_matches_hand_written_euler():
    head = make_flow_head(num_steps=5)
    obs, w = torch.randn(3, OBS_DIM), torch.randn(3, CHUNK, PADDED_DIM)
    ctx = head.encode(obs)
    assert ctx.storable and ctx.features.shape == (3, COND_DIM)
    cond = head.encoder(obs)
    x = w.clone()
    with torch.no_grad():
        for i in range(5):  # noise at t = 1, actions at t = 0, step -1/5
            x = x - 0.2 * head.velocity(x, torch.full((3,), 1.0 - i / 5), cond)
    torch.testing.assert_close(head.decode_chunk(ctx, w), x[..., :REAL_DIM], rtol=0, atol=1e-6)
    torch.testing.assert_close(head.decode(ctx, w), x[:, :2, :REAL_DIM], rtol=0, atol=1e-6)  # executed rows
    assert head.noise_shape == (CHUNK, PADDED_DIM) and head.action_dim == REAL_DIM and head.n_action_steps == 2


def test_flow_head_time_grid_runs_from_one_to_zero():
    """For v = t * a, Euler from t = 1 down to 1/N gives x0 = w - a (N + 1) / (2N): checks the grid's ends."""
    a = torch.tensor([1.0, -2.0, 0.5])
    head = FlowHeadAdapter(lambda x, t, cond: t[:, None, None] * a, lambda obs: obs,
                           noise_shape=(CHUNK, PADDED_DIM), feature_dim=OBS_DIM, num_steps=4)
    w = torch.randn(2, CHUNK, PADDED_DIM)
    torch.testing.assert_close(head.decode_chunk(head.encode(torch.randn(2, OBS_DIM)), w), w - a * 5 / 8)


def test_flow_head_determinism_and_k_draws():
    head = make_flow_head()
    obs = torch.randn(2, OBS_DIM)
    w = torch.randn(2, CHUNK, PADDED_DIM)
    first = head.decode(head.encode(obs), w)
    assert torch.equal(first, head.decode(head.encode(obs), w.clone()))
    assert not torch.allclose(first, head.decode(head.encode(obs), torch.randn_like(w)))
    k = 3
    ctx = head.encode(obs)
    wk = torch.randn(2 * k, CHUNK, PADDED_DIM)
    batched = head.decode(head.repeat_context(ctx, k), wk)
    for i in range(2):
        one = head.decode(head.encode(obs[i:i + 1].expand(k, -1)), wk[i * k:(i + 1) * k])
        torch.testing.assert_close(batched[i * k:(i + 1) * k], one, rtol=0, atol=1e-6)


def test_flow_head_feature_fn_and_unstorable_cond():
    """A token-sequence conditioning: the head sees a pooled feature, the encoder still runs once."""
    calls = []

    def encoder(obs):
        calls.append(1)
        return {"tokens": obs[:, None, :].expand(-1, 7, -1)}

    def velocity(x, t, cond):
        return x * cond["tokens"].mean(dim=(1, 2))[:, None, None] + t[:, None, None]

    head = FlowHeadAdapter(velocity, encoder, noise_shape=(CHUNK, PADDED_DIM), feature_dim=OBS_DIM,
                           feature_fn=lambda obs, cond: cond["tokens"].mean(dim=1), storable_decode_state=False)
    obs = torch.randn(2, OBS_DIM)
    ctx = head.encode(obs)
    assert calls == [1] and not head.storable_decode_state and not ctx.storable
    torch.testing.assert_close(ctx.features, obs)
    w = torch.randn(4, CHUNK, PADDED_DIM)
    assert head.decode(head.repeat_context(ctx, 2), w).shape == (4, CHUNK, PADDED_DIM) and calls == [1]
    with pytest.raises(ValueError, match="feature_fn"):
        FlowHeadAdapter(velocity, encoder, noise_shape=(CHUNK, PADDED_DIM), feature_dim=OBS_DIM).encode(obs)
    with pytest.raises(ValueError, match="storable_decode_state=False"):  # a dict cannot be declared storable
        FlowHeadAdapter(velocity, encoder, noise_shape=(CHUNK, PADDED_DIM), feature_dim=OBS_DIM,
                        feature_fn=lambda obs, cond: cond["tokens"].mean(dim=1)).encode(obs)


def test_flow_head_is_frozen():
    head = make_flow_head()
    modules = [head.velocity, head.encoder]
    assert all(not m.training for m in modules)
    assert not any(p.requires_grad for m in modules for p in m.parameters())
    before = [p.clone() for m in modules for p in m.parameters()]
    w = torch.randn(2, CHUNK, PADDED_DIM, requires_grad=True)
    head.decode(head.encode(torch.randn(2, OBS_DIM)), w).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    after = [p for m in modules for p in m.parameters()]
    assert all(p.grad is None for p in after) and all(torch.equal(b, p) for b, p in zip(before, after))
