"""Tiny, offline builds of LeRobot's real SmolVLA for tests and smoke runs (no Hub access, random weights).

``SmolVLAPolicy`` reads its VLM architecture and its processor from ``config.vlm_model_name`` even with
``load_vlm_weights=False``. :func:`write_tiny_smolvlm` writes a local directory that plays that role: a
``SmolVLMConfig`` with a few-layer Llama text model and a one-layer vision tower, a word-level tokenizer that
declares SmolVLM's image special tokens, and the SmolVLM image / video processor configs. Pointing
``vlm_model_name`` at it builds the real ``SmolVLAPolicy`` in about a second on one CPU thread.

The SmolVLM processor needs the ``num2words`` package at load time (transformers raises without it) and its
video processor needs torchvision.

Typical use::

    vlm_dir = write_tiny_smolvlm(tmp_path / "vlm")
    policy = tiny_smolvla_policy(vlm_dir)
    batch = tiny_smolvla_batch(policy, batch_size=3, seed=0)   # normalised observations + language tokens
    actions = policy.predict_action_chunk(batch)
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from tiny_common import DEFAULT_TASKS  # noqa: F401  (tests import it from here)
from tiny_common import CAMERA_SHAPE, TASK_WORDS, language_tokens, random_batch, robot_features, save_with_processors

from vla_steer.policies import tiny_vlm
from vla_steer.policies.tiny_vlm import IMAGE_SPECIAL_TOKENS  # noqa: F401  (tests import it from here)

STATE_DIM, ACTION_DIM = 4, 2

# The real SmolVLA VLM, HuggingFaceTB/SmolVLM2-500M-Video-Instruct, for write_tiny_smolvlm(dir, **FULL_SMOLVLM).
# Text model (SmolLM2-360M): width 960, 32 layers, 15 heads / 5 KV heads (head_dim 64), MLP 2560, rope theta 1e5,
# 8192 positions, per the SmolLM2-360M config.json on the Hub and the 500M SmolVLM text_config (ColSmolVLM-500M's
# config.json, which copies it); vocabulary 49280 (SmolLM2's 49152 + SmolVLM2's added tokens; SmolVLM2's eos id is
# 49279). Untied lm_head (LlamaConfig's default, which transformers reads for the tie): 507M parameters in all, the
# model's published size. Vision tower: SigLIP base patch16-512 (width 768, 12 layers, 12 heads, MLP 3072, 512 px
# images in 16 px patches); connector pixel shuffle scale_factor 4, so 64 tokens per image. transformers'
# SmolVLMConfig defaults are NOT these (they describe the 2.2B model's So400m tower), so all are set explicitly.
# The tokenizer stays the word-level stand-in (only the token count matters for the cost).
FULL_SMOLVLM = dict(
    image_size=512, patch_size=16, scale_factor=4,
    hidden_size=960, num_layers=32, num_heads=15, num_kv_heads=5, intermediate_size=2560, vocab_size=49280,
    rope_theta=100000.0, max_position_embeddings=8192,
    vision_hidden_size=768, vision_num_layers=12, vision_num_heads=12, vision_intermediate_size=3072,
)


def write_tiny_smolvlm(directory: str | Path, **sizes: int) -> Path:
    """:func:`vla_steer.policies.tiny_vlm.write_tiny_smolvlm` over ``TASK_WORDS``: the tiny SmolVLM (2 Llama
    layers of width 32, 32 px images, 4 prefix tokens per camera) in ``directory``; ``sizes`` override those
    (``**FULL_SMOLVLM`` gives the real SmolVLM2-500M architecture)."""
    return tiny_vlm.write_tiny_smolvlm(directory, TASK_WORDS, **sizes)


def full_smolvla_config(
    vlm_dir: str | Path,
    *,
    state_dim: int = 8,
    action_dim: int = 7,
    cameras: int = 3,
    camera_shape: tuple[int, int, int] = (3, 512, 512),
    **overrides: Any,
):
    """The real SmolVLA: LeRobot's ``SmolVLAConfig`` defaults (the first 16 of the VLM's 32 layers, an expert 0.75
    as wide with self-attention every 2nd layer and cross-attention otherwise, chunks of 50 over 32 padded action
    dims, 10 Euler steps, 512 px images, 48 prompt tokens at most) on the VLM written to ``vlm_dir`` with
    :data:`FULL_SMOLVLM`; random weights (``load_vlm_weights=False``)."""
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

    fields = dict(
        **robot_features(state_dim=state_dim, action_dim=action_dim, cameras=cameras, camera_shape=camera_shape),
        vlm_model_name=str(vlm_dir),
        load_vlm_weights=False,
        device="cpu",
    )
    fields.update(overrides)
    return SmolVLAConfig(**fields)


def tiny_smolvla_config(
    vlm_dir: str | Path,
    *,
    state_dim: int = STATE_DIM,
    action_dim: int = ACTION_DIM,
    cameras: int = 1,
    camera_shape: tuple[int, int, int] = CAMERA_SHAPE,
    image_size: int = 32,
    **overrides: Any,
):
    """A ``SmolVLAConfig`` on the tiny VLM at ``vlm_dir``: 2 VLM layers, an expert on each (layer 0 self-attention,
    layer 1 cross-attention, as in SmolVLA's default interleaving), chunks of 8 over 8 padded action dims."""
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

    fields = dict(
        **robot_features(state_dim=state_dim, action_dim=action_dim, cameras=cameras, camera_shape=camera_shape),
        vlm_model_name=str(vlm_dir),
        load_vlm_weights=False,
        num_vlm_layers=2,
        num_expert_layers=-1,
        self_attn_every_n_layers=2,
        resize_imgs_with_padding=(image_size, image_size),
        chunk_size=8,
        n_action_steps=4,
        max_state_dim=8,
        max_action_dim=8,
        num_steps=4,
        tokenizer_max_length=16,
        device="cpu",
    )
    fields.update(overrides)
    return SmolVLAConfig(**fields)


def tiny_smolvla_policy(vlm_dir: str | Path, *, seed: int = 0, **config_kwargs: Any):
    """The real ``SmolVLAPolicy`` built from :func:`tiny_smolvla_config`, randomly initialised under ``seed``."""
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    config = tiny_smolvla_config(vlm_dir, **config_kwargs)
    torch.manual_seed(seed)
    return SmolVLAPolicy(config)


def tokenize_tasks(policy, tasks: list[str]) -> dict[str, torch.Tensor]:
    """Language tokens and mask as LeRobot's ``TokenizerProcessorStep`` writes them (padded right to the longest)."""
    return language_tokens(policy.model.vlm_with_expert.processor.tokenizer, [f"{task}\n" for task in tasks],
                           policy.config.tokenizer_max_length, padding="longest")


def tiny_smolvla_batch(policy, batch_size: int, seed: int, tasks: list[str] | None = None) -> dict[str, torch.Tensor]:
    """A normalised observation batch for ``policy``: random state, random [0, 1] images, tokenised tasks.

    Tasks default to ``DEFAULT_TASKS`` in turn, which have different lengths, so the language padding mask matters.
    """
    return random_batch(policy, batch_size, seed, tasks, partial(tokenize_tasks, policy))


def save_pusht_smolvla_base(root: Path, image_key: str = "observation.image") -> Path:
    """LeRobot's real SmolVLA on the toy SmolVLM (random weights) for PushT's ``pixels_agent_pos`` observations: a
    96 px image, the agent position and the empty task text lerobot-eval adds for envs without instructions. Saved
    with its processors under ``root / "smolvla_base"``, as lerobot-train saves a checkpoint."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors

    config = SmolVLAConfig(
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (2,)),
                        image_key: PolicyFeature(FeatureType.VISUAL, (3, 96, 96))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
        vlm_model_name=str(write_tiny_smolvlm(root / "pusht_vlm")), load_vlm_weights=False, num_vlm_layers=2,
        num_expert_layers=-1, self_attn_every_n_layers=2, resize_imgs_with_padding=(32, 32), chunk_size=8,
        n_action_steps=8, max_state_dim=8, max_action_dim=8, num_steps=3, tokenizer_max_length=8,
        pad_language_to="max_length",  # no instruction in PushT: keep a (padded) language segment anyway
        device="cpu",
    )
    torch.manual_seed(0)
    span = {"mean": torch.full((2,), 256.0), "std": torch.full((2,), 100.0)}  # PushT pixel coordinates
    stats = {"observation.state": span, "action": span}
    return save_with_processors(SmolVLAPolicy(config), *make_smolvla_pre_post_processors(config, dataset_stats=stats),
                                root / "smolvla_base")
