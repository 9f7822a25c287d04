"""Tiny, offline builds of LeRobot's real X-VLA for tests and smoke runs (no Hub access, random weights).

``XVLAPolicy`` builds its VLM (LeRobot's vendored Florence-2: a DaViT vision tower and a BART encoder) from the
``florence_config`` dict of its config, so nothing is downloaded. :func:`tiny_florence_config` shrinks it: a
two-stage DaViT that turns a 32x32 image into a 4x4 feature map (16 tokens, plus the spatial-average token
Florence-2 prepends: 17 tokens per view), and a one-layer BART encoder. The vision projection, the Florence-2
``projection_dim`` and BART's ``d_model`` must be equal: image tokens and text embeddings are concatenated before
the encoder, and X-VLA's action transformer reads them through a ``projection_dim``-wide input projection.
:func:`full_xvla_config` is the real architecture instead (Florence-2-large + the 24-block transformer, 0.9B
parameters) for benchmarks; :func:`xvla_policy` builds either.

Only ``make_xvla_pre_post_processors`` would download something (the ``facebook/bart-large`` tokenizer); tests
feed ``observation.language.tokens`` directly, or give LeRobot's ``TokenizerProcessorStep`` the word-level
tokenizer of :func:`tiny_bart_tokenizer` (BART's special-token ids: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2).

Typical use::

    policy = tiny_xvla_policy()                     # "auto" action mode, 2 cameras + 1 padded view
    batch = tiny_xvla_batch(policy, batch_size=3, seed=0)
    actions = policy.predict_action_chunk(batch)    # [3, 8, ACTION_DIM]
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from tiny_common import DEFAULT_TASKS  # noqa: F401  (tests import it from here)
from tiny_common import (CAMERA_SHAPE, TASK_WORDS, language_tokens, random_batch, robot_features, save_with_processors,
                         word_level_tokenizer)

STATE_DIM, ACTION_DIM = 5, 4
TEXT_HIDDEN = 32  # BART d_model == Florence-2 projection_dim
PAD_ID, BOS_ID, EOS_ID = 1, 0, 2  # BART's ids, which Florence2LanguageConfig defaults to
VOCAB_SIZE = 4 + len(TASK_WORDS)  # <s>, <pad>, </s>, <unk>, words


def tiny_florence_config(*, hidden: int = TEXT_HIDDEN, vocab_size: int = VOCAB_SIZE) -> dict[str, Any]:
    """A Florence-2 config dict for ``XVLAConfig.florence_config``: 32x32 images -> 17 tokens, 1 BART layer."""
    vision_config = {
        "model_type": "davit",
        "dim_embed": [8, 16],
        "depths": [1, 1],
        "num_heads": [1, 2],
        "num_groups": [1, 2],
        "patch_size": [7, 3],
        "patch_stride": [4, 2],
        "patch_padding": [3, 1],
        "patch_prenorm": [False, True],
        "window_size": 4,
        "projection_dim": hidden,
    }
    text_config = {
        "vocab_size": vocab_size,
        "d_model": hidden,
        "encoder_layers": 1,
        "encoder_attention_heads": 2,
        "encoder_ffn_dim": 2 * hidden,
        "decoder_layers": 1,  # X-VLA deletes the decoder after building it
        "decoder_attention_heads": 2,
        "decoder_ffn_dim": 2 * hidden,
        "max_position_embeddings": 64,
        "pad_token_id": PAD_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
    }
    return {"vision_config": vision_config, "text_config": text_config, "projection_dim": hidden,
            "vocab_size": vocab_size}


def full_florence_config() -> dict[str, Any]:
    """Florence-2-large as the real X-VLA (0.9B) uses it: LeRobot's ``Florence2VisionConfig`` /
    ``Florence2LanguageConfig`` / ``Florence2Config`` defaults are Florence-2-large's (DaViT widths 256-512-1024-2048,
    depths 1-1-9-1, window 12; BART-large: d_model 1024, 12 encoder layers of 16 heads, FFN 4096, vocabulary 51289;
    projection_dim 1024), and X-VLA's own hub config (2toINF/X-VLA-*, config.json) keeps them but for 4096 text
    positions. The BART decoder is built and then deleted by ``XVLAModel``."""
    return {"vision_config": {}, "text_config": {"max_position_embeddings": 4096}}


def full_xvla_config(
    *,
    state_dim: int = 8,
    action_dim: int = 7,
    cameras: int = 3,
    camera_shape: tuple[int, int, int] = (3, 224, 224),
    **overrides: Any,
):
    """The real X-VLA: LeRobot's ``XVLAConfig`` defaults (a 24-block soft-prompted transformer of width 1024,
    chunks of 32 in the 20-dim ``ee6d`` action space, 10 denoising steps, 64 prompt tokens) on
    :func:`full_florence_config`, with ``cameras`` views resized (with padding) to 224 px as X-VLA's checkpoints
    expect. ``action_dim`` only names the robot's action feature: ``ee6d`` fixes the model's width at 20."""
    from lerobot.policies.xvla.configuration_xvla import XVLAConfig

    fields = dict(
        **robot_features(state_dim=state_dim, action_dim=action_dim, cameras=cameras, camera_shape=camera_shape),
        florence_config=full_florence_config(),
        resize_imgs_with_padding=(224, 224),
        device="cpu",
    )
    fields.update(overrides)
    return XVLAConfig(**fields)


def xvla_policy(config, *, seed: int = 0):
    """The real ``XVLAPolicy`` for ``config``, randomly initialised under ``seed``."""
    from lerobot.policies.xvla.modeling_xvla import XVLAPolicy

    torch.manual_seed(seed)
    policy = XVLAPolicy(config)
    # LeRobot's Florence-2 creates image_projection with torch.empty and no init rule covers it (checkpoints
    # overwrite it): a fresh build holds whatever memory was there, sometimes NaN. Give it seeded values.
    projection = policy.model.vlm.image_projection
    with torch.no_grad():
        projection.copy_(torch.randn(projection.shape, dtype=torch.float32) * projection.shape[0] ** -0.5)
    return policy


def tiny_xvla_config(
    *,
    state_dim: int = STATE_DIM,
    action_dim: int = ACTION_DIM,
    cameras: int = 2,
    num_image_views: int | None = 3,
    camera_shape: tuple[int, int, int] = CAMERA_SHAPE,
    **overrides: Any,
):
    """An ``XVLAConfig`` on :func:`tiny_florence_config`: a 2-block action transformer, chunks of 8.

    Defaults: ``action_mode="auto"`` over ``max_action_dim=6`` (the noise has 6 dims, the robot 4), two cameras
    plus one masked, zero-filled view (``num_image_views=3``), proprio padded to ``max_state_dim=8``.
    """
    from lerobot.policies.xvla.configuration_xvla import XVLAConfig

    fields = dict(
        **robot_features(state_dim=state_dim, action_dim=action_dim, cameras=cameras, camera_shape=camera_shape),
        florence_config=tiny_florence_config(),
        tokenizer_max_length=12,
        hidden_size=32,
        depth=2,
        num_heads=2,
        mlp_ratio=2.0,
        num_domains=3,
        len_soft_prompts=2,
        dim_time=8,
        max_len_seq=128,
        action_mode="auto",
        max_action_dim=6,
        max_state_dim=8,
        chunk_size=8,
        n_action_steps=4,
        num_denoising_steps=4,
        resize_imgs_with_padding=(32, 32),
        num_image_views=num_image_views,
        device="cpu",
    )
    fields.update(overrides)
    return XVLAConfig(**fields)


def tiny_xvla_policy(*, seed: int = 0, **config_kwargs: Any):
    """The real ``XVLAPolicy`` built from :func:`tiny_xvla_config`, randomly initialised under ``seed``."""
    return xvla_policy(tiny_xvla_config(**config_kwargs), seed=seed)


def tiny_bart_tokenizer():
    """A word-level fast tokenizer over ``TASK_WORDS`` with BART's special ids; wraps each text in ``<s> ... </s>``."""
    return word_level_tokenizer(["<s>", "<pad>", "</s>", "<unk>", *TASK_WORDS], wrap_with=("<s>", "</s>"),
                                bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tokenize_tasks(policy, tasks: list[str], tokenizer=None) -> dict[str, torch.Tensor]:
    """Language tokens and mask as LeRobot's ``TokenizerProcessorStep`` writes them for X-VLA (right padding to
    ``tokenizer_max_length``, X-VLA's ``pad_language_to="max_length"``)."""
    return language_tokens(tokenizer or tiny_bart_tokenizer(), tasks, policy.config.tokenizer_max_length,
                           padding="max_length")


def tiny_xvla_batch(policy, batch_size: int, seed: int, tasks: list[str] | None = None) -> dict[str, torch.Tensor]:
    """A preprocessed observation batch for ``policy``: random state, random [0, 1] images, tokenised tasks.

    Tasks default to ``DEFAULT_TASKS`` in turn, which have different lengths, so the language padding matters.
    """
    return random_batch(policy, batch_size, seed, tasks, partial(tokenize_tasks, policy))


def save_tiny_xvla_base(directory: Path, *, tokenizer_dir: Path, dataset_stats: dict | None = None, seed: int = 0,
                        **config_kwargs: Any) -> Path:
    """A tiny random X-VLA saved as ``lerobot-train`` saves a checkpoint: LeRobot's ``save_pretrained`` (config.json
    with the Florence-2 sizes in ``florence_config``, model.safetensors) and both pipelines of LeRobot's own
    ``make_xvla_pre_post_processors``.

    The word-level tokenizer is saved to ``tokenizer_dir`` and the config's ``tokenizer_name`` names that directory,
    so LeRobot's ``TokenizerProcessorStep`` builds (and, from the saved ``policy_preprocessor.json``, rebuilds) it
    offline with ``AutoTokenizer.from_pretrained``; ``facebook/bart-large`` would need the Hub. ``config_kwargs`` go
    to :func:`tiny_xvla_config`.
    """
    from lerobot.policies.xvla.processor_xvla import make_xvla_pre_post_processors

    tiny_bart_tokenizer().save_pretrained(tokenizer_dir)
    policy = tiny_xvla_policy(seed=seed, tokenizer_name=str(tokenizer_dir), **config_kwargs)
    return save_with_processors(policy, *make_xvla_pre_post_processors(policy.config, dataset_stats=dataset_stats),
                                directory)
