"""The adapter contract on real tiny policies: capabilities declared on the class (storable decode state,
observation history, required observation keys) agree with what ``encode`` / ``decode`` actually do, and every
adapter's ``decode`` returns the executed rows of its ``decode_chunk``. pi0 / pi0.5 are checked in
test_pi0_adapters.py (they need the openpi-patched transformers)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors
from lerobot.utils.constants import OBS_ENV_STATE, OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS, OBS_STATE

from test_lerobot_adapters import make_flow_head, observation, tiny_diffusion_policy
from tiny_vla import tiny_smolvla_batch, tiny_smolvla_policy, write_tiny_smolvlm
from tiny_xvla import tiny_xvla_batch, tiny_xvla_policy
from vla_steer.adapters import (DiffusionPolicyAdapter, FlowHeadAdapter, NativePolicyAdapter, SmolVLAAdapter,
                                XVLAAdapter)
from vla_steer.policies import ChunkPolicyConfig, build_chunk_policy

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return write_tiny_smolvlm(tmp_path_factory.mktemp("tiny_smolvlm"))


def native_case():
    torch.manual_seed(0)
    policy = build_chunk_policy(ChunkPolicyConfig(type="flow", obs_dim=6, action_dim=3, horizon=5, n_action_steps=3,
                                                  hidden_dim=32, num_layers=2, num_inference_steps=4))
    return NativePolicyAdapter(policy), torch.randn(2, 6)


def diffusion_case():
    adapter = DiffusionPolicyAdapter(tiny_diffusion_policy(cameras=2), num_inference_steps=3)
    return adapter, observation(adapter.policy, 2, seed=0)


def flow_head_case():
    return make_flow_head(), torch.randn(2, 5)


def smolvla_case(vlm_dir):
    adapter = SmolVLAAdapter(tiny_smolvla_policy(vlm_dir))
    return adapter, tiny_smolvla_batch(adapter.policy, 2, seed=0)


def xvla_case():
    adapter = XVLAAdapter(tiny_xvla_policy())
    return adapter, tiny_xvla_batch(adapter.policy, 2, seed=0)


@pytest.fixture(params=["native", "diffusion", "flow_head", "smolvla", "xvla"])
def case(request, vlm_dir):
    build = {"native": native_case, "diffusion": diffusion_case, "flow_head": flow_head_case,
             "smolvla": lambda: smolvla_case(vlm_dir), "xvla": xvla_case}[request.param]
    return build()


def test_storability_is_declared_on_the_class():
    """Known before any policy is built, let alone a rollout: vector contexts are storable, caches are not."""
    storable = {cls: cls.storable_decode_state for cls in (NativePolicyAdapter, DiffusionPolicyAdapter,
                                                           FlowHeadAdapter, SmolVLAAdapter, XVLAAdapter)}
    assert storable == {NativePolicyAdapter: True, DiffusionPolicyAdapter: True, FlowHeadAdapter: True,
                        SmolVLAAdapter: False, XVLAAdapter: False}


def test_contexts_follow_the_declared_capabilities(case):
    adapter, obs = case
    assert adapter.missing_observation_keys(obs) == []
    ctx = adapter.encode(obs)
    assert ctx.storable is adapter.storable_decode_state
    assert adapter.repeat_context(ctx, 2).storable is adapter.storable_decode_state
    if adapter.storable_decode_state:  # a [B, C] tensor the replay buffer keeps, and decodes from
        assert isinstance(ctx.decode_state, torch.Tensor) and ctx.decode_state.ndim == 2
        stored = adapter.context_from_storage(ctx.features.clone(), ctx.decode_state.clone())
        w = torch.randn(2, *adapter.noise_shape)
        torch.testing.assert_close(adapter.decode(stored, w), adapter.decode(ctx, w), rtol=0, atol=0)
    else:
        with pytest.raises(NotImplementedError, match="re-encode"):
            adapter.context_from_storage(ctx.features, torch.zeros(2, 1))


def test_decode_returns_the_executed_rows_of_the_chunk(case):
    """The same contract for every adapter: rows ``n_obs_steps - 1`` onwards, ``n_action_steps`` of them."""
    adapter, obs = case
    ctx = adapter.encode(obs)
    w = torch.randn(2, *adapter.noise_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        chunk, executed = adapter.decode_chunk(ctx, w), adapter.decode(ctx, w)
    assert chunk.shape == (2, adapter.noise_shape[0], adapter.action_dim)
    assert executed.shape == (2, adapter.n_action_steps, adapter.action_dim)
    start = adapter.n_obs_steps - 1
    torch.testing.assert_close(executed, chunk[:, start:start + adapter.n_action_steps], rtol=0, atol=0)


def test_n_obs_steps(vlm_dir):
    assert native_case()[0].n_obs_steps == 1 and flow_head_case()[0].n_obs_steps == 1
    diffusion = diffusion_case()[0]
    assert diffusion.n_obs_steps == diffusion.policy.config.n_obs_steps == 2
    assert smolvla_case(vlm_dir)[0].n_obs_steps == 1 and xvla_case()[0].n_obs_steps == 1


def test_flat_tensor_adapters_need_no_keys():
    for adapter in (native_case()[0], flow_head_case()[0]):
        assert adapter.required_observation_keys == () and adapter.missing_observation_keys({}) == []


def test_diffusion_policy_needs_every_input_feature():
    """LeRobot's DiffusionPolicy stacks all cameras, so each one is required (no "one of the cameras")."""
    adapter, obs = diffusion_case()
    cameras = ("observation.images.cam0", "observation.images.cam1")
    assert adapter.required_observation_keys == (OBS_STATE, *cameras)
    no_cam1 = {key: value for key, value in obs.items() if key != cameras[1]}
    assert adapter.missing_observation_keys(no_cam1) == [cameras[1]]
    with pytest.raises(ValueError, match="missing observation.images.cam1"):
        adapter.encode(no_cam1)
    env_state = DiffusionPolicyAdapter(tiny_diffusion_policy(cameras=0))
    assert env_state.required_observation_keys == (OBS_STATE, OBS_ENV_STATE)
    assert env_state.missing_observation_keys({OBS_STATE: obs[OBS_STATE]}) == [OBS_ENV_STATE]


def test_smolvla_missing_keys_describe_what_the_preprocessor_writes(vlm_dir):
    adapter, batch = smolvla_case(vlm_dir)
    assert adapter.required_observation_keys == (OBS_STATE, OBS_LANGUAGE_TOKENS, OBS_LANGUAGE_ATTENTION_MASK)
    # a raw observation: the task text is not yet tokenised
    raw = {OBS_STATE: torch.randn(2, 4), "observation.images.cam0": torch.rand(2, 3, 24, 40),
           "task": ["pick up the red cube", "open the drawer"]}
    missing = adapter.missing_observation_keys(raw)
    assert [m.split(" ")[0] for m in missing] == [OBS_LANGUAGE_TOKENS, OBS_LANGUAGE_ATTENTION_MASK]
    assert all("TokenizerProcessorStep" in m for m in missing)
    stats = {OBS_STATE: {"mean": torch.zeros(4), "std": torch.ones(4)},
             "action": {"mean": torch.zeros(2), "std": torch.ones(2)}}
    preprocessor, _ = make_smolvla_pre_post_processors(adapter.policy.config, dataset_stats=stats)
    assert adapter.missing_observation_keys(preprocessor(dict(raw))) == []
    # LeRobot pads missing cameras, so any one will do; none at all is missing
    no_camera = {key: value for key, value in batch.items() if key != "observation.images.cam0"}
    assert adapter.missing_observation_keys(no_camera) == ["one of the cameras (observation.images.cam0)"]


def test_xvla_required_keys_follow_use_proprio():
    adapter, batch = xvla_case()
    assert adapter.required_observation_keys == (OBS_LANGUAGE_TOKENS, OBS_STATE)
    # the attention mask is optional (pooling falls back to the pad id); one camera of two is enough
    partial = {key: value for key, value in batch.items()
               if key not in (OBS_LANGUAGE_ATTENTION_MASK, "observation.images.cam1")}
    assert adapter.missing_observation_keys(partial) == []
    assert adapter.missing_observation_keys({OBS_LANGUAGE_TOKENS: batch[OBS_LANGUAGE_TOKENS]}) == [
        OBS_STATE, "one of the cameras (observation.images.cam0, observation.images.cam1)"]
    without_proprio = XVLAAdapter(tiny_xvla_policy(use_proprio=False))
    assert without_proprio.required_observation_keys == (OBS_LANGUAGE_TOKENS,)
