"""XVLAAdapter on LeRobot's real XVLAPolicy, built offline at a tiny size with random weights (tiny_xvla.py).

LeRobot's X-VLA ignores ``noise=``: it draws its starting noise with ``torch.randn`` inside
``XVLAModel.generate_actions``. References are therefore taken with the global RNG seeded so that this draw is a
known tensor (:func:`lerobot_chunk`).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from lerobot.configs.types import NormalizationMode
from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS, OBS_STATE

from tiny_common import assert_base_frozen_through_backward
from tiny_xvla import ACTION_DIM, TEXT_HIDDEN, tiny_bart_tokenizer, tiny_xvla_batch, tiny_xvla_policy, tokenize_tasks
from vla_steer.adapters.xvla import XVLAAdapter

torch.set_num_threads(1)

CAMERA = "observation.images.cam0"
MAX_STATE_DIM, MAX_ACTION_DIM, CHUNK = 8, 6, 8
IMAGE_TOKENS = 17  # per view: 4x4 DaViT feature map + Florence-2's spatial-average token


@pytest.fixture(scope="module")
def adapter():
    return XVLAAdapter(tiny_xvla_policy())


def noise(adapter, batch_size, seed):
    return torch.randn(batch_size, *adapter.noise_shape, generator=torch.Generator().manual_seed(seed))


def rows(batch, start, stop):
    return {key: value[start:stop] for key, value in batch.items()}


def lerobot_chunk(policy, batch, seed, **kwargs):
    """``(x1, chunk)``: LeRobot's ``predict_action_chunk`` with the global RNG seeded so that the
    ``torch.randn(B, chunk_size, dim_action, dtype=...)`` inside ``generate_actions`` draws ``x1``."""
    batch_size = batch[OBS_LANGUAGE_TOKENS].shape[0]
    torch.manual_seed(seed)
    x1 = torch.randn(batch_size, policy.config.chunk_size, policy.model.dim_action,
                     dtype=policy.model._get_target_dtype())
    torch.manual_seed(seed)
    return x1, policy.predict_action_chunk(dict(batch), **kwargs)


def test_tiny_builder_is_reproducible():
    """Two builds under one seed are identical and finite (LeRobot leaves Florence-2's image_projection as
    uninitialised memory; tiny_xvla_policy fills it)."""
    first, second = tiny_xvla_policy(seed=4).state_dict(), tiny_xvla_policy(seed=4).state_dict()
    assert all(torch.equal(first[k], second[k]) and torch.isfinite(first[k]).all() for k in first)


def test_shapes_and_context(adapter):
    assert adapter.family == "xvla"
    assert adapter.noise_shape == (CHUNK, MAX_ACTION_DIM)  # "auto" pads the 4 robot dims to max_action_dim
    assert adapter.action_dim == ACTION_DIM and adapter.n_action_steps == 4 and adapter.num_denoising_steps == 4
    assert adapter.feature_dim == TEXT_HIDDEN + MAX_STATE_DIM  # known from the config, before any forward pass
    batch = tiny_xvla_batch(adapter.policy, 3, seed=0)
    ctx = adapter.encode(batch)
    assert not ctx.storable and ctx.features.shape == (3, adapter.feature_dim) and ctx.features.dtype == torch.float32
    state = ctx.decode_state
    assert sorted(state) == ["aux_visual_inputs", "domain_id", "proprio", "vlm_features"]
    # view 0 + 12 text tokens through the encoder; views 1 and 2 (the padded, masked one) as raw image tokens
    assert state["vlm_features"].shape == (3, IMAGE_TOKENS + 12, TEXT_HIDDEN)
    assert state["aux_visual_inputs"].shape == (3, 2 * IMAGE_TOKENS, TEXT_HIDDEN)
    assert state["proprio"].shape == (3, MAX_STATE_DIM) and torch.equal(state["domain_id"], torch.zeros(3).long())
    assert adapter.decode_chunk(ctx, noise(adapter, 3, 1)).shape == (3, CHUNK, ACTION_DIM)
    assert adapter.decode(ctx, noise(adapter, 3, 1)).shape == (3, 4, ACTION_DIM)  # the executed rows
    with pytest.raises(NotImplementedError, match="re-encode"):
        adapter.context_from_storage(ctx.features, torch.zeros(3, 1))


def test_decode_matches_lerobot(adapter):
    """(a) the adapter's chunk is LeRobot's predict_action_chunk / generate_actions / select_action chunk when
    LeRobot's internal torch.randn draws the same noise."""
    policy = adapter.policy
    batch = tiny_xvla_batch(policy, 3, seed=2)
    w, reference = lerobot_chunk(policy, batch, seed=3)
    ours = adapter.decode_chunk(adapter.encode(batch), w)
    assert reference.shape == ours.shape == (3, CHUNK, ACTION_DIM)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)

    # LeRobot really ignores noise=: the same seed with another noise gives the same chunk
    _, ignored = lerobot_chunk(policy, batch, seed=3, noise=torch.zeros_like(w))
    assert torch.equal(ignored, reference)

    # one level down, on the model: generate_actions returns the postprocessed (trimmed) chunk
    inputs = policy._build_model_inputs(batch)
    torch.manual_seed(3)
    generated = policy.model.generate_actions(**inputs, steps=policy.config.num_denoising_steps)
    torch.testing.assert_close(ours, generated, rtol=0, atol=1e-5)

    # select_action executes the rows decode returns, the first n_action_steps of that chunk
    policy.reset()
    torch.manual_seed(3)
    executed = torch.stack([policy.select_action(dict(batch)) for _ in range(policy.config.n_action_steps)], dim=1)
    policy.reset()
    torch.testing.assert_close(adapter.decode(adapter.encode(batch), w), executed, rtol=0, atol=1e-5)

    # the padded noise dims of the "auto" action space reach the transformer: they are part of the steering space
    w_pad = w.clone()
    w_pad[..., ACTION_DIM:] = 0.0
    assert not torch.allclose(adapter.decode_chunk(adapter.encode(batch), w_pad), ours, atol=1e-4)


def test_decode_is_deterministic_in_noise(adapter):
    """(b) same noise, same actions, whatever the global RNG does; different noise, different actions."""
    batch = tiny_xvla_batch(adapter.policy, 2, seed=6)
    w = noise(adapter, 2, 7)
    torch.manual_seed(100)
    first = adapter.decode(adapter.encode(batch), w)
    torch.manual_seed(200)
    second = adapter.decode(adapter.encode(batch), w.clone())
    assert torch.equal(first, second)
    other = adapter.decode(adapter.encode(batch), noise(adapter, 2, 8))
    assert not torch.allclose(first, other, atol=1e-3), "different noise must give different actions"


def test_k_draws_share_one_encode_and_state_is_read_only(adapter):
    """(c) repeat_context + one batched decode equals K separate decodes; decoding leaves the state untouched."""
    batch, k = tiny_xvla_batch(adapter.policy, 2, seed=9), 3
    ctx = adapter.encode(batch)
    before = {name: t.clone() for name, t in ctx.decode_state.items()}
    repeated = adapter.repeat_context(ctx, k)
    assert repeated.features.shape == (2 * k, adapter.feature_dim) and not repeated.storable
    assert all(t.shape[0] == 2 * k for t in repeated.decode_state.values())
    torch.testing.assert_close(repeated.features[k:2 * k], ctx.features[1:2].expand(k, -1), rtol=0, atol=0)
    w = noise(adapter, 2 * k, 10)
    batched = adapter.decode(repeated, w)
    for i in range(2):
        ctx_i = adapter.encode(rows(batch, i, i + 1))
        for j in range(k):
            one = adapter.decode(ctx_i, w[i * k + j:i * k + j + 1])
            torch.testing.assert_close(batched[i * k + j:i * k + j + 1], one, rtol=0, atol=1e-5)
    assert all(torch.equal(before[name], ctx.decode_state[name]) for name in before)


def test_vlm_runs_once_per_encode_and_never_in_decode(adapter):
    """(d) counts forward_vlm calls, vision-tower and BART-encoder passes, and action-transformer passes."""
    model = adapter.policy.model
    calls = {"forward_vlm": 0, "vision": 0, "text_encoder": 0, "transformer": 0}
    original_forward_vlm = model.forward_vlm

    def counting_forward_vlm(*args, **kwargs):
        calls["forward_vlm"] += 1
        return original_forward_vlm(*args, **kwargs)

    def count(name):
        return lambda *_: calls.__setitem__(name, calls[name] + 1)

    model.forward_vlm = counting_forward_vlm
    hooks = [model.vlm.vision_tower.register_forward_hook(count("vision")),
             model.vlm.vision_tower.convs[0].register_forward_hook(count("vision")),  # forward_features_unpool
             model.vlm.language_model.model.encoder.register_forward_hook(count("text_encoder")),
             model.transformer.register_forward_hook(count("transformer"))]
    try:
        ctx = adapter.encode(tiny_xvla_batch(adapter.policy, 2, seed=11))
        assert calls == {"forward_vlm": 1, "vision": 1, "text_encoder": 1, "transformer": 0}
        for _ in range(3):
            adapter.decode(ctx, noise(adapter, 2, 12))
        adapter.decode(adapter.repeat_context(ctx, 4), noise(adapter, 8, 13))
        steps = adapter.num_denoising_steps
        assert calls == {"forward_vlm": 1, "vision": 1, "text_encoder": 1, "transformer": 4 * steps}
    finally:
        del model.forward_vlm
        for hook in hooks:
            hook.remove()


def test_base_stays_frozen_through_backward(adapter):
    """(e) a backward through decode reaches the noise but leaves every policy parameter untouched."""
    assert_base_frozen_through_backward(adapter, tiny_xvla_batch(adapter.policy, 2, seed=14), noise(adapter, 2, 15),
                                        padded_from=ACTION_DIM)


def test_pooling_options(adapter):
    """Each pooling has its documented width and is the masked summary of forward_vlm's tokens (image tokens plus
    unpadded text); the proprio part is the padded state; the mask can come from the pad id alone."""
    policy = adapter.policy
    by_name = {name: XVLAAdapter(policy, pooling=name) for name in ("mean", "last", "mean+last")}
    assert {name: a.feature_dim for name, a in by_name.items()} == {
        "mean": TEXT_HIDDEN + MAX_STATE_DIM, "last": TEXT_HIDDEN + MAX_STATE_DIM,
        "mean+last": 2 * TEXT_HIDDEN + MAX_STATE_DIM}
    no_proprio = XVLAAdapter(policy, include_proprio=False)
    assert no_proprio.feature_dim == TEXT_HIDDEN

    batch = tiny_xvla_batch(policy, 3, seed=16)  # tasks of 5, 5 and 3 words: different text padding
    features = {name: a.encode(batch).features for name, a in by_name.items()}
    vlm = adapter.encode(batch).decode_state["vlm_features"]
    text_lengths = batch[OBS_LANGUAGE_ATTENTION_MASK].sum(dim=1)
    assert text_lengths.tolist() == [7, 7, 5]  # <s> + words + </s>
    for i, n_text in enumerate(text_lengths.tolist()):
        valid = vlm[i, : IMAGE_TOKENS + n_text]
        torch.testing.assert_close(features["mean"][i, :TEXT_HIDDEN], valid.mean(dim=0), rtol=0, atol=1e-6)
        torch.testing.assert_close(features["last"][i, :TEXT_HIDDEN], valid[-1], rtol=0, atol=0)
    state = torch.nn.functional.pad(batch[OBS_STATE], (0, MAX_STATE_DIM - batch[OBS_STATE].shape[1]))
    torch.testing.assert_close(features["mean"][:, TEXT_HIDDEN:], state, rtol=0, atol=0)
    torch.testing.assert_close(features["mean+last"],
                               torch.cat([features["mean"][:, :TEXT_HIDDEN], features["last"]], dim=-1))
    torch.testing.assert_close(no_proprio.encode(batch).features, features["mean"][:, :TEXT_HIDDEN])
    # without an attention mask in the batch, the pad id gives the same mask
    unmasked = {k: v for k, v in batch.items() if k != OBS_LANGUAGE_ATTENTION_MASK}
    torch.testing.assert_close(by_name["mean+last"].encode(unmasked).features, features["mean+last"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown pooling"):
        XVLAAdapter(policy, pooling="max")


def test_wrong_inputs_raise_clear_errors(adapter):
    """(f)"""
    batch = tiny_xvla_batch(adapter.policy, 2, seed=17)
    with pytest.raises(TypeError, match="dict of tensors"):
        adapter.encode(batch[OBS_STATE])
    no_tokens = {k: v for k, v in batch.items() if k not in (OBS_LANGUAGE_TOKENS, OBS_LANGUAGE_ATTENTION_MASK)}
    with pytest.raises(ValueError, match="observation.language.tokens.*TokenizerProcessorStep"):
        adapter.encode(no_tokens)
    with pytest.raises(ValueError, match="cameras"):
        adapter.encode({k: v for k, v in batch.items() if not k.startswith("observation.images.")})
    with pytest.raises(ValueError, match="missing observation.state"):
        adapter.encode({k: v for k, v in batch.items() if k != OBS_STATE})
    with pytest.raises(ValueError, match="max_state_dim"):
        adapter.encode({**batch, OBS_STATE: torch.randn(2, MAX_STATE_DIM + 1)})
    with pytest.raises(ValueError, match="integer token ids"):
        adapter.encode({**batch, OBS_LANGUAGE_TOKENS: batch[OBS_LANGUAGE_TOKENS].float()})
    with pytest.raises(ValueError, match="batch sizes disagree"):
        adapter.encode({**batch, CAMERA: batch[CAMERA][:1]})
    with pytest.raises(ValueError, match=r"domain_id must be in \[0, 3\)"):
        adapter.encode({**batch, "domain_id": torch.tensor([0, 3])})
    ctx = adapter.encode(batch)
    with pytest.raises(ValueError, match="noise must be"):
        adapter.decode(ctx, torch.randn(2, CHUNK, ACTION_DIM))  # unpadded noise
    with pytest.raises(ValueError, match="noise must be"):
        adapter.decode(ctx, noise(adapter, 3, 0))
    with pytest.raises(ValueError, match="num_denoising_steps"):
        XVLAAdapter(adapter.policy, num_denoising_steps=0)


def test_domain_id_and_num_denoising_steps_override():
    """A per-row domain id (soft prompts, domain-aware projections) and a written-back step count still match."""
    policy = tiny_xvla_policy(seed=1, use_hetero_proj=True)
    adapter = XVLAAdapter(policy, num_denoising_steps=2)
    assert policy.config.num_denoising_steps == adapter.num_denoising_steps == 2
    batch = {**tiny_xvla_batch(policy, 2, seed=18), "domain_id": torch.tensor([1, 2])}
    w, reference = lerobot_chunk(policy, batch, seed=19)
    ctx = adapter.encode(batch)
    assert torch.equal(ctx.decode_state["domain_id"], torch.tensor([1, 2]))
    ours = adapter.decode_chunk(ctx, w)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    default_domain = adapter.decode_chunk(adapter.encode({k: v for k, v in batch.items() if k != "domain_id"}), w)
    assert not torch.allclose(ours, default_domain, atol=1e-4)


def test_bfloat16_policy():
    """config.dtype="bfloat16": LeRobot draws bf16 noise; float32 noise from a head is cast the same way."""
    policy = tiny_xvla_policy(seed=3, dtype="bfloat16")
    adapter = XVLAAdapter(policy)
    batch = tiny_xvla_batch(policy, 2, seed=24)
    w, reference = lerobot_chunk(policy, batch, seed=25)
    assert w.dtype == reference.dtype == torch.bfloat16
    ctx = adapter.encode(batch)
    assert ctx.features.dtype == torch.float32
    torch.testing.assert_close(adapter.decode_chunk(ctx, w.float()), reference, rtol=0, atol=0)


def test_ee6d_action_space():
    """ee6d: 20-dim noise and output, sigmoid grippers; its preprocess zeroes the gripper channels of x_t, so the
    noise in channels 9 and 19 has no effect (a LeRobot fact worth knowing when steering)."""
    policy = tiny_xvla_policy(action_mode="ee6d", state_dim=20, action_dim=20, max_state_dim=20, cameras=1,
                              num_image_views=None)
    adapter = XVLAAdapter(policy)
    assert adapter.noise_shape == (CHUNK, 20) and adapter.action_dim == 20
    batch = tiny_xvla_batch(policy, 2, seed=20)
    ctx = adapter.encode(batch)
    assert ctx.decode_state["aux_visual_inputs"].shape == (2, 0, TEXT_HIDDEN)  # one view: no aux tokens
    w, reference = lerobot_chunk(policy, batch, seed=21)
    ours = adapter.decode_chunk(ctx, w)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    grippers = ours[..., [9, 19]]
    assert ((grippers > 0) & (grippers < 1)).all()
    w_grip = w.clone()
    w_grip[..., [9, 19]] = 5.0
    assert torch.equal(adapter.decode_chunk(ctx, w_grip), ours)
    assert adapter.repeat_context(ctx, 2).decode_state["aux_visual_inputs"].shape == (4, 0, TEXT_HIDDEN)


def test_processors_around_the_adapter_give_env_space_actions():
    """LeRobot's X-VLA processor steps (tokenizer given as an object: no download) before ``encode`` and the
    unnormaliser after decoding give the actions of LeRobot's own pipeline; the adapter alone stays normalised."""
    from lerobot.policies.xvla.processor_xvla import (XVLAAddDomainIdProcessorStep, XVLAImageNetNormalizeProcessorStep,
                                                      XVLAImageToFloatProcessorStep)
    from lerobot.processor import (AddBatchDimensionProcessorStep, DeviceProcessorStep, NormalizerProcessorStep,
                                   PolicyProcessorPipeline, TokenizerProcessorStep, UnnormalizerProcessorStep)
    from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action

    mean_std = {"VISUAL": NormalizationMode.IDENTITY, "STATE": NormalizationMode.MEAN_STD,
                "ACTION": NormalizationMode.MEAN_STD}
    policy = tiny_xvla_policy(seed=2, normalization_mapping=mean_std)
    config = policy.config
    stats = {
        OBS_STATE: {"mean": torch.tensor([1.0, -1.0, 0.5, 0.0, 2.0]), "std": torch.tensor([2.0, 0.5, 1.0, 3.0, 1.0])},
        "action": {"mean": torch.tensor([0.3, -2.0, 0.0, 1.0]), "std": torch.tensor([0.1, 4.0, 1.0, 2.0])},
    }
    features = {**config.input_features, **config.output_features}
    # make_xvla_pre_post_processors' steps, with a tokenizer object instead of facebook/bart-large
    preprocessor = PolicyProcessorPipeline(steps=[
        AddBatchDimensionProcessorStep(),
        TokenizerProcessorStep(tokenizer=tiny_bart_tokenizer(), max_length=config.tokenizer_max_length,
                               padding=config.pad_language_to, padding_side=config.tokenizer_padding_side),
        XVLAImageToFloatProcessorStep(),
        XVLAImageNetNormalizeProcessorStep(),
        XVLAAddDomainIdProcessorStep(),
        DeviceProcessorStep(device="cpu"),
        NormalizerProcessorStep(features=features, norm_map=config.normalization_mapping, stats=stats),
    ])
    postprocessor = PolicyProcessorPipeline(
        steps=[UnnormalizerProcessorStep(features=config.output_features, norm_map=config.normalization_mapping,
                                         stats=stats), DeviceProcessorStep(device="cpu")],
        to_transition=policy_action_to_transition, to_output=transition_to_policy_action)

    adapter = XVLAAdapter(policy)
    g = torch.Generator().manual_seed(22)
    observation = {OBS_STATE: torch.randn(2, 5, generator=g), CAMERA: torch.rand(2, 3, 24, 40, generator=g),
                   "observation.images.cam1": torch.rand(2, 3, 24, 40, generator=g),
                   "task": ["pick up the red cube", "open the drawer"]}
    processed = preprocessor(dict(observation))
    assert torch.equal(processed[OBS_LANGUAGE_TOKENS], tokenize_tasks(policy, observation["task"])[OBS_LANGUAGE_TOKENS])
    w, reference = lerobot_chunk(policy, processed, seed=23)
    normalised = adapter.decode_chunk(adapter.encode(processed), w)
    actions = postprocessor(normalised)
    torch.testing.assert_close(actions, postprocessor(reference), rtol=0, atol=1e-5)
    torch.testing.assert_close(normalised * stats["action"]["std"] + stats["action"]["mean"], actions,
                               rtol=0, atol=1e-5)
    assert not torch.allclose(actions, normalised)
