import pytest
import torch

from vla_steer.adapters import LatentLayout, NativePolicyAdapter
from vla_steer.policies import ChunkPolicyConfig, build_chunk_policy, load_chunk_policy


@pytest.fixture(params=["diffusion", "flow"])
def adapter(request):
    torch.manual_seed(0)
    cfg = ChunkPolicyConfig(type=request.param, obs_dim=6, action_dim=3, horizon=5, n_action_steps=3,
                            hidden_dim=32, num_layers=2, num_train_timesteps=20, num_inference_steps=5)
    policy = build_chunk_policy(cfg)
    policy.set_stats(torch.randn(6), torch.rand(6) + 0.5, -2 * torch.ones(3), torch.ones(3))
    return NativePolicyAdapter(policy.eval())


def test_decode_is_deterministic_in_noise(adapter):
    obs = torch.randn(4, 6)
    w = torch.randn(4, *adapter.noise_shape)
    ctx = adapter.encode(obs)
    first, second = adapter.decode(ctx, w), adapter.decode(adapter.encode(obs), w.clone())
    assert torch.equal(first, second)
    other = adapter.decode(ctx, torch.randn_like(w))
    assert not torch.allclose(first, other), "different noise must give different actions"


def test_decode_matches_policy_predict_action_chunk(adapter):
    obs = torch.randn(3, 6)
    w = torch.randn(3, *adapter.noise_shape)
    reference = adapter.policy.predict_action_chunk(obs, noise=w)
    ctx = adapter.encode(obs)
    torch.testing.assert_close(adapter.decode_chunk(ctx, w), reference, rtol=0, atol=1e-6)
    # the executed rows: the first n_action_steps of the chunk
    torch.testing.assert_close(adapter.decode(ctx, w), reference[:, :3], rtol=0, atol=1e-6)
    lo, hi = adapter.policy.action_min, adapter.policy.action_max
    assert (reference >= lo - 1e-5).all() and (reference <= hi + 1e-5).all()


def test_k_draws_share_one_encode(adapter):
    obs = torch.randn(2, 6)
    k = 5
    ctx = adapter.encode(obs)
    w = torch.randn(2 * k, *adapter.noise_shape)
    batched = adapter.decode(adapter.repeat_context(ctx, k), w)
    for i in range(2):
        one = adapter.decode(adapter.encode(obs[i:i + 1].expand(k, -1)), w[i * k:(i + 1) * k])
        torch.testing.assert_close(batched[i * k:(i + 1) * k], one, rtol=0, atol=1e-6)


def test_latent_layouts(adapter):
    full = LatentLayout("full", adapter.noise_shape)
    tiled = LatentLayout("tiled", adapter.noise_shape)
    assert full.latent_dim == 15 and tiled.latent_dim == 3
    z = torch.randn(2, 3)
    noise = tiled.to_noise(z)
    assert noise.shape == (2, 5, 3) and torch.equal(noise[:, 0], noise[:, 4]) and torch.equal(noise[:, 2], z)
    flat = torch.randn(2, 15)
    assert torch.equal(full.to_noise(flat).flatten(1), flat)
    with pytest.raises(ValueError, match="unknown latent layout"):
        LatentLayout("diagonal", adapter.noise_shape)


def test_save_load_roundtrip(adapter, tmp_path):
    adapter.policy.save_pretrained(tmp_path / "base")
    loaded = NativePolicyAdapter(load_chunk_policy(tmp_path / "base"))
    obs, w = torch.randn(2, 6), torch.randn(2, *adapter.noise_shape)
    assert torch.equal(adapter.decode(adapter.encode(obs), w), loaded.decode(loaded.encode(obs), w))
    (tmp_path / "base" / "config.json").write_text('{"type": "diffusion", "obs_dim": 6, "action_dim": 3, "evil": 1}')
    with pytest.raises(ValueError, match="unknown fields"):
        load_chunk_policy(tmp_path / "base")
