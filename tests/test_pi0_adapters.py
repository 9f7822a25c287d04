"""Adapters for LeRobot's PI0Policy / PI05Policy: the real classes at a tiny size, random weights, offline.

Needs the openpi-patched transformers (LeRobot's pi0 modelling code calls functions only the patched Gemma has),
so it runs as its own CI stage:

    scripts/make_pi_env.sh .pi-overlay
    VLA_STEER_PI_ENV=1 PYTHONPATH=.pi-overlay python -m pytest tests/test_pi0_adapters.py

Without ``VLA_STEER_PI_ENV=1`` the default test run does not collect this module (tests/conftest.py); with it and
without the patched transformers, collection fails with the fix in the message.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch


def _patched_transformers_missing() -> str | None:
    try:
        import transformers
        from transformers.models.siglip import check
    except ImportError:
        return ("needs the openpi-patched transformers (transformers-openpi==4.53.3); build it with "
                "`scripts/make_pi_env.sh .pi-overlay` and run with PYTHONPATH=.pi-overlay")
    if not check.check_whether_transformers_replace_is_installed_correctly():
        return f"transformers {transformers.__version__} has openpi's check module but fails its version check"
    return None


if (_reason := _patched_transformers_missing()) is not None:
    raise RuntimeError(_reason)

from lerobot.policies.pi0.configuration_pi0 import PI0Config  # noqa: E402
from lerobot.policies.pi0.modeling_pi0 import PaliGemmaWithExpertModel, PI0Pytorch, get_gemma_config  # noqa: E402
from lerobot.policies.pi05.configuration_pi05 import PI05Config  # noqa: E402
from lerobot.policies.pi05.modeling_pi05 import PI05Pytorch  # noqa: E402
from tiny_common import assert_base_frozen_through_backward  # noqa: E402
from tiny_pi0 import (  # noqa: E402
    FULL, TINY, TINY_IMAGE_SIZE, SizedPaliGemmaWithExpertModel, SizedPI0Pytorch, SizedPI05Pytorch, make_pi_policy,
    make_pi_processors,
)
from transformers.cache_utils import DynamicCache  # noqa: E402

from vla_steer.adapters.pi0 import PI0Adapter, PI05Adapter  # noqa: E402

torch.set_num_threads(1)

CAMERAS, STATE_DIM, ACTION_DIM = 2, 4, 3
CHUNK, MAX_ACTION_DIM, MAX_STATE_DIM, TOKENS, STEPS = 5, 32, 32, 6, 4
PREFIX_LEN = CAMERAS * (TINY_IMAGE_SIZE // 14) ** 2 + TOKENS
ADAPTERS = {"pi0": PI0Adapter, "pi05": PI05Adapter}


def make_adapter(family: str, dtype: str = "float32", **adapter_kwargs):
    torch.manual_seed(0)
    return ADAPTERS[family](make_pi_policy(family, cameras=CAMERAS, state_dim=STATE_DIM, action_dim=ACTION_DIM,
                                           dtype=dtype), **adapter_kwargs)


def observation(batch: int, seed: int) -> dict[str, torch.Tensor]:
    """A preprocessed batch, as ``predict_action_chunk`` takes it: images in [0, 1], a (normalised) state, and
    right-padded language tokens with between 2 and ``TOKENS`` real tokens."""
    g = torch.Generator().manual_seed(seed)
    obs = {f"observation.images.cam{i}": torch.rand(batch, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, generator=g)
           for i in range(CAMERAS)}
    obs["observation.state"] = torch.randn(batch, STATE_DIM, generator=g)
    obs["observation.language.tokens"] = torch.randint(1, TINY.vocab_size, (batch, TOKENS), generator=g)
    lengths = torch.randint(2, TOKENS + 1, (batch,), generator=g)
    obs["observation.language.attention_mask"] = torch.arange(TOKENS)[None, :] < lengths[:, None]
    return obs


def noise(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, CHUNK, MAX_ACTION_DIM, generator=torch.Generator().manual_seed(seed))


def rows(obs: dict, index: slice) -> dict:
    return {key: value[index] for key, value in obs.items()}


@pytest.fixture(params=["pi0", "pi05"], scope="module")
def adapter(request):
    return make_adapter(request.param)


def test_shapes_and_context(adapter):
    assert adapter.noise_shape == (CHUNK, MAX_ACTION_DIM)  # padded action dims are part of the latent
    assert adapter.action_dim == ACTION_DIM and adapter.n_action_steps == 3 and adapter.num_inference_steps == STEPS
    state_width = MAX_STATE_DIM if adapter.family == "pi0" else 0
    assert adapter.feature_dim == TINY.vlm.width + state_width
    ctx = adapter.encode(observation(3, seed=1))
    assert not ctx.storable and ctx.features.shape == (3, adapter.feature_dim) and ctx.features.dtype == torch.float32
    cache = ctx.decode_state.past_key_values
    assert isinstance(cache, DynamicCache) and len(cache) == TINY.vlm.depth
    assert cache[0][0].shape == (3, TINY.vlm.num_kv_heads, PREFIX_LEN, TINY.vlm.head_dim)
    assert ctx.decode_state.prefix_pad_masks.shape == (3, PREFIX_LEN)
    if adapter.family == "pi0":  # the padded state enters through the expert and ends the feature vector
        assert ctx.decode_state.state.shape == (3, MAX_STATE_DIM)
        torch.testing.assert_close(ctx.features[:, -MAX_STATE_DIM:-MAX_STATE_DIM + STATE_DIM],
                                   observation(3, seed=1)["observation.state"], rtol=0, atol=0)
    else:
        assert ctx.decode_state.state is None
    assert adapter.decode_chunk(ctx, noise(3, seed=2)).shape == (3, CHUNK, ACTION_DIM)
    assert adapter.decode(ctx, noise(3, seed=2)).shape == (3, 3, ACTION_DIM)  # the executed rows
    with pytest.raises(ValueError, match="padded action dims"):
        adapter.decode(ctx, torch.randn(3, CHUNK, ACTION_DIM))


def test_declared_capabilities(adapter):
    """Checkable before any rollout: a KV-cache context (not storable), one observation step, and the keys a
    preprocessed batch must hold (pi0.5's state is already text in the prompt)."""
    assert not type(adapter).storable_decode_state and adapter.n_obs_steps == 1
    state = ("observation.state",) if adapter.family == "pi0" else ()
    language = ("observation.language.tokens", "observation.language.attention_mask")
    assert adapter.required_observation_keys == (*state, *language)
    obs = observation(2, seed=30)
    assert adapter.missing_observation_keys(obs) == []
    no_cameras = {k: v for k, v in obs.items() if not k.startswith("observation.images.")}
    assert adapter.missing_observation_keys(no_cameras) == [
        "one of the cameras (observation.images.cam0, observation.images.cam1)"]
    with pytest.raises(ValueError, match="TokenizerProcessorStep"):
        adapter.encode({k: v for k, v in obs.items() if k != "observation.language.tokens"})
    with pytest.raises(NotImplementedError, match="re-encode"):
        adapter.context_from_storage(adapter.encode(obs).features, torch.zeros(2, 1))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", ["pi0", "pi05"])
def test_decode_matches_lerobot_predict_action_chunk(family, dtype):
    """(a) the adapter returns exactly LeRobot's chunk for the same noise, also with a camera missing."""
    adapter = make_adapter(family, dtype=dtype)
    policy = adapter.policy
    obs, w = observation(3, seed=3), noise(3, seed=4)
    ctx = adapter.encode(obs)
    ours = adapter.decode_chunk(ctx, w)
    torch.testing.assert_close(ours, policy.predict_action_chunk(dict(obs), noise=w), rtol=0, atol=1e-5)
    torch.testing.assert_close(adapter.decode(ctx, w), ours[:, : adapter.n_action_steps], rtol=0, atol=0)
    # the padded chunk equals PI0Pytorch.sample_actions before LeRobot's unpadding
    images, img_masks = policy._preprocess_images(obs)
    tokens, masks = obs["observation.language.tokens"], obs["observation.language.attention_mask"]
    args = (images, img_masks, tokens, masks) + ((policy.prepare_state(obs),) if family == "pi0" else ())
    with torch.no_grad():
        padded = adapter.denoise(adapter.encode(obs), w)
    torch.testing.assert_close(padded, policy.model.sample_actions(*args, noise=w), rtol=0, atol=1e-5)
    # a missing camera becomes an empty, masked image in both
    one_camera = {k: v for k, v in obs.items() if k != "observation.images.cam1"}
    torch.testing.assert_close(adapter.decode_chunk(adapter.encode(one_camera), w),
                               policy.predict_action_chunk(dict(one_camera), noise=w), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["pi0", "pi05"])
def test_num_inference_steps_override(family):
    adapter = make_adapter(family, num_inference_steps=2)
    obs, w = observation(2, seed=5), noise(2, seed=6)
    images, img_masks = adapter.policy._preprocess_images(obs)
    args = [images, img_masks, obs["observation.language.tokens"], obs["observation.language.attention_mask"]]
    if family == "pi0":
        args.append(adapter.policy.prepare_state(obs))
    reference = adapter.policy.model.sample_actions(*args, noise=w, num_steps=2)[:, :, :ACTION_DIM]
    ours = adapter.decode_chunk(adapter.encode(obs), w)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    # written back to the config: the policy's own sampling follows the adapter
    assert adapter.policy.config.num_inference_steps == 2
    torch.testing.assert_close(ours, adapter.policy.predict_action_chunk(dict(obs), noise=w), rtol=0, atol=1e-5)
    assert not torch.allclose(ours, make_adapter(family).decode_chunk(make_adapter(family).encode(obs), w), atol=1e-4)
    with pytest.raises(ValueError, match="num_inference_steps"):
        make_adapter(family, num_inference_steps=0)


def test_decode_is_deterministic_in_noise(adapter):
    """(b) same noise, same actions whatever the global RNG; other noise (even only its padded dims) differs."""
    obs, w = observation(2, seed=7), noise(2, seed=8)
    ctx = adapter.encode(obs)
    torch.manual_seed(100)
    first = adapter.decode(ctx, w)
    torch.manual_seed(200)
    assert torch.equal(first, adapter.decode(adapter.encode(obs), w.clone()))
    assert torch.equal(first, adapter.decode(ctx, w))  # a context can be decoded again
    assert not torch.allclose(first, adapter.decode(ctx, noise(2, seed=9)), atol=1e-3)
    padded_only = w.clone()
    padded_only[..., ACTION_DIM:] = torch.randn_like(padded_only[..., ACTION_DIM:])
    assert not torch.allclose(first, adapter.decode(ctx, padded_only), atol=1e-4), "padded noise dims matter"


def test_k_draws_share_one_encode(adapter):
    """(c) ``repeat_context`` + one batched decode equals ``k`` separate decodes; the source context is unchanged."""
    obs, k = observation(2, seed=10), 3
    ctx = adapter.encode(obs)
    before = adapter.decode(ctx, noise(2, seed=11))
    w = noise(2 * k, seed=12)
    repeated = adapter.repeat_context(ctx, k)
    assert repeated.features.shape == (2 * k, adapter.feature_dim)
    assert repeated.decode_state.past_key_values[0][0].shape[0] == 2 * k
    batched = adapter.decode(repeated, w)
    for i in range(2):
        ctx_i = adapter.encode(rows(obs, slice(i, i + 1)))
        torch.testing.assert_close(repeated.features[i * k:(i + 1) * k], ctx_i.features.expand(k, -1),
                                   rtol=0, atol=1e-5)
        for j in range(k):
            one = adapter.decode(ctx_i, w[i * k + j:i * k + j + 1])
            torch.testing.assert_close(batched[i * k + j:i * k + j + 1], one, rtol=0, atol=1e-5)
    assert ctx.decode_state.past_key_values[0][0].shape[0] == 2
    assert torch.equal(adapter.decode(ctx, noise(2, seed=11)), before)


def test_prefix_runs_once_per_encode_and_never_in_decode(adapter):
    """(d) counts forwards of the vision tower, the VLM decoder and the expert decoder; the cache stays as it was.

    LeRobot calls ``language_model.forward`` / ``gemma_expert.model.forward`` directly (no module hooks fire), so
    the hooks sit on their first decoder layer, which runs once per forward.
    """
    backbone = adapter.policy.model.paligemma_with_expert
    calls = {"vision": 0, "vlm": 0, "expert": 0}

    def counter(name):
        return lambda *_: calls.__setitem__(name, calls[name] + 1)

    hooks = [backbone.paligemma.model.vision_tower.register_forward_hook(counter("vision")),
             backbone.paligemma.model.language_model.layers[0].register_forward_hook(counter("vlm")),
             backbone.gemma_expert.model.layers[0].register_forward_hook(counter("expert"))]
    try:
        ctx = adapter.encode(observation(2, seed=13))
        assert calls == {"vision": CAMERAS, "vlm": 1, "expert": 0}  # one SigLIP pass per camera, one prefix pass
        cache = ctx.decode_state.past_key_values
        snapshot = [(key.clone(), value.clone()) for key, value in cache]
        for draw in range(3):
            adapter.decode(ctx, noise(2, seed=14 + draw))
        assert calls == {"vision": CAMERAS, "vlm": 1, "expert": 3 * STEPS}
        adapter.decode(adapter.repeat_context(ctx, 4), noise(8, seed=20))
        assert calls == {"vision": CAMERAS, "vlm": 1, "expert": 4 * STEPS}
    finally:
        for hook in hooks:
            hook.remove()
    assert cache.get_seq_length() == PREFIX_LEN and len(cache) == len(snapshot)
    assert all(torch.equal(k0, k1) and torch.equal(v0, v1) for (k0, v0), (k1, v1) in zip(snapshot, cache))


def test_base_stays_frozen_through_backward(adapter):
    """(e) parameters bit-identical and without gradients; a backward through decode reaches the noise."""
    assert_base_frozen_through_backward(adapter, observation(2, seed=21), noise(2, seed=22))


@pytest.mark.parametrize("family", ["pi0", "pi05"])
def test_pooling_of_prefix_hidden_states(family):
    """Features pool the final-norm prefix output over real tokens only (mean, last real token, or both)."""
    adapters = {p: make_adapter(family, pooling=p) for p in ("mean", "last", "mean+last")}
    policy = adapters["mean"].policy
    captured = []
    norm = policy.model.paligemma_with_expert.paligemma.model.language_model.norm
    hook = norm.register_forward_hook(lambda module, args, out: captured.append(out[0]))
    obs = observation(3, seed=23)
    try:
        feats = {p: a.encode(obs).features for p, a in adapters.items()}
    finally:
        hook.remove()
    hidden = captured[0]
    assert hidden.shape == (3, PREFIX_LEN, TINY.vlm.width)
    real = torch.cat([torch.ones(3, PREFIX_LEN - TOKENS, dtype=torch.bool),
                      obs["observation.language.attention_mask"]], dim=1)
    width = TINY.vlm.width
    last_index = real.sum(dim=1) - 1  # images are all real, language is right-padded
    for i in range(3):
        torch.testing.assert_close(feats["mean"][i, :width], hidden[i][real[i]].mean(dim=0))
        torch.testing.assert_close(feats["last"][i, :width], hidden[i, last_index[i]])
    torch.testing.assert_close(feats["mean+last"][:, :2 * width],
                               torch.cat([feats["mean"][:, :width], feats["last"][:, :width]], dim=1))
    assert adapters["mean+last"].feature_dim == 2 * width + (MAX_STATE_DIM if family == "pi0" else 0)
    # padded language tokens change neither the features nor the actions
    scrambled = dict(obs)
    scrambled["observation.language.tokens"] = torch.where(
        obs["observation.language.attention_mask"], obs["observation.language.tokens"], 7)
    ctx, ctx_scrambled = adapters["mean+last"].encode(obs), adapters["mean+last"].encode(scrambled)
    torch.testing.assert_close(ctx.features, ctx_scrambled.features, rtol=0, atol=1e-5)
    w = noise(3, seed=24)
    torch.testing.assert_close(adapters["mean"].decode(ctx, w), adapters["mean"].decode(ctx_scrambled, w),
                               rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        make_adapter(family, pooling="max")


def test_pi0_state_features_can_be_dropped():
    adapter = make_adapter("pi0", include_state=False)
    assert adapter.feature_dim == TINY.vlm.width
    assert adapter.encode(observation(2, seed=25)).features.shape == (2, TINY.vlm.width)


@pytest.mark.parametrize("family", ["pi0", "pi05"])
def test_processors_around_the_adapter_take_raw_observations_and_a_task(family):
    """LeRobot's pre/post pipelines (a local tokenizer in place of PaliGemma's) around the adapter map raw
    observations plus a task string to unnormalised actions, like the pipelines around predict_action_chunk."""
    torch.manual_seed(0)  # room for pi0.5's prompt: task words + 32 state bins + "Action:"
    policy = make_pi_policy(family, cameras=CAMERAS, state_dim=STATE_DIM, action_dim=ACTION_DIM,
                            tokenizer_max_length=48)
    adapter = ADAPTERS[family](policy)
    ones = lambda d: torch.ones(d)  # noqa: E731
    stats = {
        "observation.state": {"mean": ones(STATE_DIM), "std": 2 * ones(STATE_DIM),
                              "q01": -3 * ones(STATE_DIM), "q99": 5 * ones(STATE_DIM)},
        "action": {"mean": torch.tensor([0.0, 1.0, -1.0]), "std": torch.tensor([1.0, 10.0, 0.1]),
                   "q01": torch.tensor([-1.0, -10.0, 0.0]), "q99": torch.tensor([1.0, 10.0, 0.5])},
    }
    pre, post = make_pi_processors(policy.config, stats)
    raw = {key: value for key, value in observation(2, seed=26).items() if not key.startswith("observation.lang")}
    raw["task"] = ["pick the red cube", "push the blue block"]
    assert adapter.missing_observation_keys(raw)  # a raw batch lacks the language tokens
    w = noise(2, seed=27)
    actions = post(adapter.decode_chunk(adapter.encode(pre(dict(raw))), w))
    reference = post(policy.predict_action_chunk(pre(dict(raw)), noise=w))
    torch.testing.assert_close(actions, reference, rtol=0, atol=1e-5)
    # the task and the state reach the features (pi0.5: through the binned state in the prompt)
    other_task = adapter.encode(pre({**raw, "task": ["place the red cube", "push the blue block"]})).features
    features = adapter.encode(pre(dict(raw))).features
    assert not torch.allclose(other_task[0], features[0]) and torch.allclose(other_task[1], features[1], atol=1e-6)
    moved = adapter.encode(pre({**raw, "observation.state": raw["observation.state"] + 1.5})).features
    assert not torch.allclose(moved, features, atol=1e-4)


@pytest.mark.parametrize("family", ["pi0", "pi05"])
def test_full_size_builder_matches_lerobot_constructor(family):
    """``sizes=FULL`` builds LeRobot's own architecture: same HF configs, parameter names, shapes and dtypes.

    Built on the ``meta`` device: no memory, no weights (the real model is ~3.5B parameters).
    """
    config_cls, stock_cls, sized_cls = ((PI0Config, PI0Pytorch, SizedPI0Pytorch) if family == "pi0"
                                        else (PI05Config, PI05Pytorch, SizedPI05Pytorch))
    config = config_cls(device="cpu")
    with torch.device("meta"):
        stock, sized = stock_cls(config), sized_cls(config, FULL)
    for a, b in [(stock.paligemma_with_expert.paligemma, sized.paligemma_with_expert.paligemma),
                 (stock.paligemma_with_expert.gemma_expert, sized.paligemma_with_expert.gemma_expert)]:
        assert a.config.to_dict() == b.config.to_dict()
    shapes = lambda m: {k: (tuple(v.shape), v.dtype) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(stock) == shapes(sized)
    assert 3.0e9 < sum(p.numel() for p in sized.parameters()) < 4.0e9
    adarms = [False, family == "pi05"]
    with torch.device("meta"):  # bfloat16 keeps LeRobot's float32 exceptions (norms, patch embedding)
        stock_bf16 = PaliGemmaWithExpertModel(get_gemma_config("gemma_2b"), get_gemma_config("gemma_300m"), adarms,
                                              precision="bfloat16")
        sized_bf16 = SizedPaliGemmaWithExpertModel(FULL, adarms, precision="bfloat16", image_size=224)
    assert shapes(stock_bf16) == shapes(sized_bf16)


def test_sizes_enforce_lerobot_constraints():
    from lerobot.policies.pi0.modeling_pi0 import GemmaConfig
    from tiny_pi0 import PiSizes

    base = dict(vision_width=32, vision_depth=1, vision_heads=2, vision_mlp_dim=64, patch_size=14, vocab_size=300)
    with pytest.raises(ValueError, match="8 heads"):
        PiSizes(vlm=GemmaConfig(64, 2, 128, 4, 1, 16), expert=GemmaConfig(32, 2, 64, 4, 1, 16), **base)
    with pytest.raises(ValueError, match="head_dim"):
        PiSizes(vlm=GemmaConfig(64, 2, 128, 8, 1, 16), expert=GemmaConfig(32, 2, 64, 8, 1, 8), **base)


# -------------------------------------------------------------------------------------------------------------
# End to end: a saved tiny pi0 / pi0.5 checkpoint steered in LeRobot's PushT (pixels), as tests/test_lerobot_native.py
# does for DiffusionPolicy and tests/test_lerobot_native_vla.py for X-VLA.
#
# Why the tiny subclass is loaded directly, not through ``base.path``: LeRobot's loader (``get_policy_class("pi0")
# .from_pretrained``) builds the architecture from config.json, and ``PI0Config`` / ``PI05Config`` only know the
# ``gemma_300m`` / ``gemma_2b`` variants: a tiny checkpoint would come back as the 3.5B model. So the checkpoint is
# written by LeRobot's ``save_pretrained`` with its processors, reloaded by the ``Sized*`` class's ``from_pretrained``
# (LeRobot's own, inherited), its processors by LeRobot's ``make_pre_post_processors(pretrained_path=...)``, and
# handed to the trainer through ``lerobot_steering_base``. ``base.path`` on a pi0 checkpoint is exercised only at full
# size, not in CI.

PUSHT_PIXELS = {"type": "pusht", "obs_type": "pixels_agent_pos", "episode_length": 39,  # whole chunks of 3
                "num_envs": 2}
PUSHT_CHUNK, PUSHT_STEPS = 5, 3


def _span(low: float, high: float, dim: int = 2) -> dict[str, torch.Tensor]:
    """Stats of PushT's [0, 512] pixel coordinates for both MEAN_STD (pi0) and QUANTILES (pi0.5) normalisation."""
    return {"mean": torch.full((dim,), (low + high) / 2), "std": torch.full((dim,), (high - low) / 4),
            "q01": torch.full((dim,), low), "q99": torch.full((dim,), high)}


PUSHT_STATS = {"observation.state": _span(0.0, 512.0), "action": _span(0.0, 512.0)}


def pusht_pi_policy(family: str):
    """A tiny pi0 / pi0.5 reading PushT's 96 px ``observation.image`` and 2-d ``observation.state``, acting in 2-d."""
    from lerobot.configs.types import FeatureType, PolicyFeature

    config_cls = PI0Config if family == "pi0" else PI05Config
    config = config_cls(
        input_features={"observation.image": PolicyFeature(FeatureType.VISUAL, (3, 96, 96)),
                        "observation.state": PolicyFeature(FeatureType.STATE, (2,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
        image_resolution=(TINY_IMAGE_SIZE, TINY_IMAGE_SIZE), device="cpu",
        tokenizer_max_length=48,  # pi0.5's prompt: "Task: , State: <32 bins>;\nAction: " is 40 tokens
        chunk_size=PUSHT_CHUNK, n_action_steps=PUSHT_STEPS, num_inference_steps=STEPS)
    torch.manual_seed(0)
    return make_pi_policy(family, config=config)


@pytest.mark.parametrize("family", ["pi0", "pi05"])
def test_train_on_a_saved_pi_checkpoint_in_pusht(family, tmp_path):
    """Save (LeRobot's save_pretrained + processors), reload offline, ~200 env steps of LP-DS (latent critic: pi0
    contexts are KV caches, not storable) in PushT from pixels, then the head's decode on the processed observation
    equals LeRobot's own ``predict_action_chunk(noise=...)`` for the noise the head picks."""
    from lerobot.policies.factory import make_pre_post_processors

    from test_lerobot_native import native_recipe
    from tiny_pi0 import SizedPI0Policy, SizedPI05Policy, save_tiny_pi_base
    from vla_steer.config import recipe_from_dict
    from vla_steer.pipeline import lerobot_steering_base
    from vla_steer.training import SteeringTrainer

    original = pusht_pi_policy(family)
    directory = save_tiny_pi_base(original, tmp_path / "base" / "pretrained_model",
                                  tokenizer_dir=tmp_path / "tokenizer", dataset_stats=PUSHT_STATS)
    # LeRobot's from_pretrained prints a missing embed_tokens key (safetensors saved it once, as the tied lm_head)
    # and carries on: compare every tensor instead of trusting its report
    policy = (SizedPI0Policy if family == "pi0" else SizedPI05Policy).from_pretrained(directory)
    saved, loaded = original.state_dict(), policy.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    preprocessor, postprocessor = make_pre_post_processors(
        policy.config, pretrained_path=str(directory), preprocessor_overrides={"device_processor": {"device": "cpu"}})

    recipe = recipe_from_dict(native_recipe(
        tmp_path, str(directory), env=PUSHT_PIXELS, algorithm={"name": "lpds", "critic": "latent"},
        train={"total_env_steps": 200, "warmup_env_steps": 60, "eval_every": 200, "checkpoint_every": 200}))
    base = lerobot_steering_base(recipe, policy, preprocessor, postprocessor, source=str(directory),
                                 directory=directory)
    trainer = SteeringTrainer(recipe, base=base)
    results = trainer.run()
    assert trainer.env_steps >= 200 and trainer.updates > 0
    assert results["base_policy"]["source"] == str(directory) and results["task"] == "pusht/PushT-v0"
    assert (tmp_path / "run" / "head" / "head.safetensors").is_file()

    adapter, collector = trainer.adapter, trainer.collector
    assert adapter.family == family and adapter.noise_shape == (PUSHT_CHUNK, MAX_ACTION_DIM)
    raw, _ = collector.envs.reset(seed=[7, 8])
    tasks = collector.tasks()
    assert tasks == ["", ""]
    batch = trainer.base.observations(raw, tasks)
    assert batch["observation.image"].shape == (2, 3, 96, 96) and batch["observation.image"].std() > 0
    assert batch["observation.language.tokens"].shape == (2, 48)
    context = adapter.encode(batch)
    noise = trainer.layout.to_noise(trainer.algo.act(context.features, deterministic=True))
    assert noise.shape == (2, PUSHT_CHUNK, MAX_ACTION_DIM)  # the padded action dims are part of the latent
    ours = adapter.decode_chunk(context, noise)
    theirs = policy.predict_action_chunk(dict(batch), noise=noise)
    assert ours.shape == theirs.shape == (2, PUSHT_CHUNK, 2)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    torch.testing.assert_close(adapter.decode(context, noise), theirs[:, :PUSHT_STEPS], rtol=0, atol=1e-5)
    # the env gets LeRobot's unnormalised actions (MEAN_STD for pi0, QUANTILES to [-1, 1] for pi0.5)
    stats = PUSHT_STATS["action"]
    expected = (theirs * stats["std"] + stats["mean"] if family == "pi0"
                else (theirs + 1) / 2 * (stats["q99"] - stats["q01"]) + stats["q01"])
    torch.testing.assert_close(trainer.base.actions(ours), expected, rtol=0, atol=1e-3)
    collector.close()


@pytest.mark.parametrize("family", ["pi0", "pi05"])
def test_latency_benchmark_runs_every_variant_at_tiny_size(family):
    """benchmarks/vla_latency.py's timing phase (tests/test_vla_latency.py covers SmolVLA and X-VLA)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import vla_latency

    args = vla_latency.parse_args(["--policy", family, "--size", "tiny", "--device", "cpu", "--rounds", "1",
                                   "--warmup", "0"])
    timing = vla_latency.run_timing(args)
    assert list(timing["median_s"]) == ["base", "steered", "naive"]
    assert timing["architecture"]["prefix_tokens"] == 3 * (TINY_IMAGE_SIZE // 14) ** 2 + TOKENS  # 3 cameras
