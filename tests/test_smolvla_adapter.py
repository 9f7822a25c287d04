"""SmolVLAAdapter on LeRobot's real SmolVLAPolicy, built offline at a tiny size with random weights (tiny_vla.py)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors
from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS, OBS_STATE

from tiny_common import assert_base_frozen_through_backward
from tiny_vla import ACTION_DIM, tiny_smolvla_batch, tiny_smolvla_policy, tokenize_tasks, write_tiny_smolvlm
from vla_steer.adapters.smolvla import SmolVLAAdapter

torch.set_num_threads(1)

HIDDEN = 32  # text hidden size of the tiny VLM
CAMERA = "observation.images.cam0"


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return write_tiny_smolvlm(tmp_path_factory.mktemp("tiny_smolvlm"))


@pytest.fixture(scope="module")
def adapter(vlm_dir):
    return SmolVLAAdapter(tiny_smolvla_policy(vlm_dir))


def noise(adapter, batch_size, seed):
    return torch.randn(batch_size, *adapter.noise_shape, generator=torch.Generator().manual_seed(seed))


def rows(batch, start, stop):
    return {key: value[start:stop] for key, value in batch.items()}


def test_shapes_and_context(adapter):
    config = adapter.policy.config
    assert adapter.family == "smolvla"
    assert adapter.noise_shape == (config.chunk_size, config.max_action_dim) == (8, 8)
    assert adapter.action_dim == ACTION_DIM and adapter.n_action_steps == 4 and adapter.num_steps == 4
    assert adapter.feature_dim == 2 * HIDDEN  # known from the VLM config, before any forward pass
    batch = tiny_smolvla_batch(adapter.policy, 3, seed=0)
    ctx = adapter.encode(batch)
    assert not ctx.storable and ctx.features.shape == (3, adapter.feature_dim) and ctx.features.dtype == torch.float32
    cache, pad_masks = ctx.decode_state["past_key_values"], ctx.decode_state["prefix_pad_masks"]
    assert sorted(cache) == [0, 1] and pad_masks.shape[0] == 3  # one entry per VLM layer
    # 4 image tokens + the longest task (5 words) + 1 state token
    assert cache[0]["key_states"].shape[:2] == (3, 10) and pad_masks.shape == (3, 10)
    assert adapter.decode_chunk(ctx, noise(adapter, 3, 1)).shape == (3, 8, ACTION_DIM)
    assert adapter.decode(ctx, noise(adapter, 3, 1)).shape == (3, 4, ACTION_DIM)  # the executed rows
    with pytest.raises(NotImplementedError, match="re-encode"):
        adapter.context_from_storage(ctx.features, torch.zeros(3, 1))


def test_decode_matches_lerobot(adapter):
    """(a) the adapter's chunk is LeRobot's predict_action_chunk, its executed rows the select_action ones, for the
    same noise."""
    policy = adapter.policy
    batch = tiny_smolvla_batch(policy, 3, seed=2)
    w = noise(adapter, 3, 3)
    ctx = adapter.encode(batch)
    chunk, ours = adapter.decode_chunk(ctx, w), adapter.decode(ctx, w)
    reference = policy.predict_action_chunk(dict(batch), noise=w.clone())
    assert reference.shape == chunk.shape == (3, 8, ACTION_DIM)
    torch.testing.assert_close(chunk, reference, rtol=0, atol=1e-5)
    policy.reset()
    executed = [policy.select_action(dict(batch), noise=w.clone())]
    executed += [policy.select_action(dict(batch)) for _ in range(policy.config.n_action_steps - 1)]
    torch.testing.assert_close(ours, torch.stack(executed, dim=1), rtol=0, atol=1e-5)
    policy.reset()
    # the padded noise dims reach the expert, so they are part of the steering space
    w_pad = w.clone()
    w_pad[..., ACTION_DIM:] = 0.0
    assert not torch.allclose(adapter.decode(adapter.encode(batch), w_pad), ours, atol=1e-4)


def test_prefix_padding_to_prefix_length(adapter):
    """With ``prefix_length`` padding after the state token, decode still matches LeRobot and the features
    (masked mean, state token) are those of the unpadded prefix."""
    policy = adapter.policy
    batch = tiny_smolvla_batch(policy, 2, seed=4)
    w = noise(adapter, 2, 5)
    plain = adapter.encode(batch)
    policy.model.prefix_length = 16  # embed_prefix reads the attribute
    try:
        padded = adapter.encode(batch)
        assert padded.decode_state["prefix_pad_masks"].shape == (2, 16)
        ours = adapter.decode_chunk(padded, w)
        torch.testing.assert_close(ours, policy.predict_action_chunk(dict(batch), noise=w.clone()), rtol=0, atol=1e-5)
    finally:
        policy.model.prefix_length = -1
    torch.testing.assert_close(padded.features, plain.features, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours, adapter.decode_chunk(plain, w), rtol=0, atol=1e-5)


def test_decode_is_deterministic_in_noise(adapter):
    """(b) same noise, same actions, whatever the global RNG does; different noise, different actions."""
    batch = tiny_smolvla_batch(adapter.policy, 2, seed=6)
    w = noise(adapter, 2, 7)
    torch.manual_seed(100)
    first = adapter.decode(adapter.encode(batch), w)
    torch.manual_seed(200)
    second = adapter.decode(adapter.encode(batch), w.clone())
    assert torch.equal(first, second)
    other = adapter.decode(adapter.encode(batch), noise(adapter, 2, 8))
    assert not torch.allclose(first, other, atol=1e-3), "different noise must give different actions"


def test_k_draws_share_one_encode_and_cache_is_read_only(adapter):
    """(c) repeat_context + one batched decode equals K separate decodes; decoding leaves the cache untouched."""
    batch, k = tiny_smolvla_batch(adapter.policy, 2, seed=9), 3
    ctx = adapter.encode(batch)
    cache = ctx.decode_state["past_key_values"]
    before = {layer: {name: t.clone() for name, t in kv.items()} for layer, kv in cache.items()}
    repeated = adapter.repeat_context(ctx, k)
    assert repeated.features.shape == (2 * k, adapter.feature_dim) and not repeated.storable
    assert repeated.decode_state["past_key_values"][1]["value_states"].shape[0] == 2 * k
    torch.testing.assert_close(repeated.features[k:2 * k], ctx.features[1:2].expand(k, -1), rtol=0, atol=0)
    w = noise(adapter, 2 * k, 10)
    batched = adapter.decode(repeated, w)
    for i in range(2):
        ctx_i = adapter.encode(rows(batch, i, i + 1))
        for j in range(k):
            one = adapter.decode(ctx_i, w[i * k + j:i * k + j + 1])
            torch.testing.assert_close(batched[i * k + j:i * k + j + 1], one, rtol=0, atol=1e-5)
    assert all(torch.equal(before[layer][name], cache[layer][name]) for layer in before for name in before[layer])


def test_vlm_prefix_runs_once_per_encode_and_never_in_decode(adapter):
    """(d) counts prefix passes (fill_kv_cache=True), expert passes, vision-tower and VLM text-layer calls."""
    vlm_with_expert = adapter.policy.model.vlm_with_expert
    vlm = vlm_with_expert.get_vlm_model()
    calls = {"prefix": 0, "expert": 0, "vision": 0, "vlm_text": 0}
    original_forward = vlm_with_expert.forward

    def counting_forward(*args, **kwargs):
        calls["prefix" if kwargs["fill_kv_cache"] else "expert"] += 1
        return original_forward(*args, **kwargs)

    def count(name):
        return lambda *_: calls.__setitem__(name, calls[name] + 1)

    vlm_with_expert.forward = counting_forward  # LeRobot calls .forward directly, so hooks on it would not fire
    hooks = [vlm.vision_model.register_forward_hook(count("vision")),
             vlm.text_model.layers[0].self_attn.q_proj.register_forward_hook(count("vlm_text"))]
    try:
        ctx = adapter.encode(tiny_smolvla_batch(adapter.policy, 2, seed=11))
        assert calls == {"prefix": 1, "expert": 0, "vision": 1, "vlm_text": 1}
        for _ in range(3):
            adapter.decode(ctx, noise(adapter, 2, 12))
        adapter.decode(adapter.repeat_context(ctx, 4), noise(adapter, 8, 13))
        assert calls == {"prefix": 1, "expert": 4 * adapter.num_steps, "vision": 1, "vlm_text": 1}
    finally:
        del vlm_with_expert.forward
        for hook in hooks:
            hook.remove()


def test_base_stays_frozen_through_backward(adapter):
    """(e) a backward through decode reaches the noise but leaves every policy parameter untouched."""
    assert_base_frozen_through_backward(adapter, tiny_smolvla_batch(adapter.policy, 2, seed=14), noise(adapter, 2, 15),
                                        padded_from=ACTION_DIM)


def test_pooling_options(adapter):
    """(f) each pooling has its documented width; features ignore language padding; the state reaches 'last'."""
    policy = adapter.policy
    by_name = {name: SmolVLAAdapter(policy, pooling=name) for name in ("mean", "last", "mean+last")}
    assert {name: a.feature_dim for name, a in by_name.items()} == {"mean": HIDDEN, "last": HIDDEN,
                                                                    "mean+last": 2 * HIDDEN}
    batch = tiny_smolvla_batch(policy, 3, seed=16)  # row 2 has a shorter task: padded language tokens
    features = {name: a.encode(batch).features for name, a in by_name.items()}
    assert all(f.shape == (3, by_name[name].feature_dim) for name, f in features.items())
    torch.testing.assert_close(features["mean+last"], torch.cat([features["mean"], features["last"]], dim=-1))
    alone = {**rows(batch, 2, 3), **tokenize_tasks(policy, ["open the drawer"])}  # same row without padding
    assert alone[OBS_LANGUAGE_TOKENS].shape[1] < batch[OBS_LANGUAGE_TOKENS].shape[1]
    torch.testing.assert_close(by_name["mean+last"].encode(alone).features, features["mean+last"][2:3],
                               rtol=0, atol=1e-5)
    # image and language tokens do not attend to the state token, so a new state changes only that token
    moved = {**batch, OBS_STATE: batch[OBS_STATE] + 1.0}
    assert not torch.allclose(by_name["last"].encode(moved).features, features["last"], atol=1e-4)
    with pytest.raises(ValueError, match="unknown pooling"):
        SmolVLAAdapter(policy, pooling="max")


def test_wrong_inputs_raise_clear_errors(adapter):
    batch = tiny_smolvla_batch(adapter.policy, 2, seed=17)
    with pytest.raises(TypeError, match="dict of tensors"):
        adapter.encode(batch[OBS_STATE])
    no_tokens = {k: v for k, v in batch.items() if k not in (OBS_LANGUAGE_TOKENS, OBS_LANGUAGE_ATTENTION_MASK)}
    with pytest.raises(ValueError, match="observation.language.tokens.*TokenizerProcessorStep"):
        adapter.encode(no_tokens)
    with pytest.raises(ValueError, match="cameras"):
        adapter.encode({k: v for k, v in batch.items() if k != CAMERA})
    with pytest.raises(ValueError, match="max_state_dim"):
        adapter.encode({**batch, OBS_STATE: torch.randn(2, 9)})
    ctx = adapter.encode(batch)
    with pytest.raises(ValueError, match="noise must be"):
        adapter.decode(ctx, torch.randn(2, 8, ACTION_DIM))  # unpadded noise
    with pytest.raises(ValueError, match="noise must be"):
        adapter.decode(ctx, noise(adapter, 3, 0))


def test_processors_around_the_adapter_give_env_space_actions(vlm_dir):
    """LeRobot's preprocessor (task text -> tokens, normalised state) before ``encode`` and postprocessor after
    decoding give the unnormalised actions of LeRobot's own pipeline; the adapter alone stays normalised."""
    policy = tiny_smolvla_policy(vlm_dir, seed=1)
    stats = {
        OBS_STATE: {"mean": torch.tensor([1.0, -1.0, 0.5, 0.0]), "std": torch.tensor([2.0, 0.5, 1.0, 3.0])},
        "action": {"mean": torch.tensor([0.3, -2.0]), "std": torch.tensor([0.1, 4.0])},
    }
    preprocessor, postprocessor = make_smolvla_pre_post_processors(policy.config, dataset_stats=stats)
    adapter = SmolVLAAdapter(policy)
    g = torch.Generator().manual_seed(18)
    observation = {OBS_STATE: torch.randn(2, 4, generator=g), CAMERA: torch.rand(2, 3, 24, 40, generator=g),
                   "task": ["pick up the red cube", "open the drawer"]}
    w = noise(adapter, 2, 19)
    processed = preprocessor(dict(observation))
    normalised = adapter.decode_chunk(adapter.encode(processed), w)
    actions = postprocessor(normalised)
    reference = postprocessor(policy.predict_action_chunk(dict(processed), noise=w.clone()))
    torch.testing.assert_close(actions, reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(normalised * stats["action"]["std"] + stats["action"]["mean"], actions,
                               rtol=0, atol=1e-5)
    assert not torch.allclose(actions, normalised)


def test_pi_aloha_transform_and_num_steps_override(vlm_dir):
    """adapt_to_pi_aloha (14-dim Aloha state/actions) is applied like LeRobot; num_steps is written to the config."""
    policy = tiny_smolvla_policy(vlm_dir, state_dim=14, action_dim=14, max_state_dim=16, max_action_dim=16,
                                 adapt_to_pi_aloha=True)
    adapter = SmolVLAAdapter(policy, num_steps=2)
    assert policy.config.num_steps == adapter.num_steps == 2
    batch = tiny_smolvla_batch(policy, 2, seed=20)
    batch[OBS_STATE] = torch.rand(2, 14) * 0.03 + 0.02  # grippers (6, 13) inside Aloha's linear range
    state = batch[OBS_STATE].clone()
    w = noise(adapter, 2, 21)
    ours = adapter.decode_chunk(adapter.encode(batch), w)
    assert torch.equal(batch[OBS_STATE], state), "the adapter must not convert the caller's state in place"
    reference = policy.predict_action_chunk({**batch, OBS_STATE: state.clone()}, noise=w.clone())
    assert ours.shape == (2, 8, 14)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    unflipped = adapter.denoise(adapter.encode(batch), w)[..., :14]
    torch.testing.assert_close(ours[..., 1], -unflipped[..., 1], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="num_steps"):
        SmolVLAAdapter(policy, num_steps=0)
