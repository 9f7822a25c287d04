"""What the tiny offline LeRobot builders (tiny_vla.py, tiny_xvla.py, tiny_pi0.py) and the adapter tests share: a
word-level tokenizer, the language entries LeRobot's ``TokenizerProcessorStep`` writes, the features of a small
robot, random observation batches, a tiny PushT DiffusionPolicy checkpoint and the frozen-base check every adapter
must pass. Nothing here downloads anything."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

TASK_WORDS = ("pick", "place", "push", "open", "close", "the", "a", "red", "blue", "green", "cube", "block",
              "drawer", "door", "into", "on", "left", "right", "up", "down")
DEFAULT_TASKS = ("pick up the red cube", "push the blue block left", "open the drawer", "close the door")
CAMERA_SHAPE = (3, 24, 40)  # not square and not the VLM's size: exercises LeRobot's resize-with-pad


def word_level_tokenizer(tokens: Sequence[str], *, pre_tokenizer: str = "WhitespaceSplit",
                         wrap_with: tuple[str, str] | None = None, **special_tokens: Any):
    """A fast tokenizer whose ids are the positions in ``tokens``; any other word becomes ``<unk>``.

    ``pre_tokenizer`` names a ``tokenizers.pre_tokenizers`` class (``"Whitespace"`` also splits off punctuation);
    ``wrap_with`` is a ``(first, last)`` pair of tokens put around every text (BART's ``<s> ... </s>``);
    ``special_tokens`` (``pad_token="<pad>"`` ...) go to ``PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(tokens)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = getattr(pre_tokenizers, pre_tokenizer)()
    if wrap_with is not None:
        first, last = wrap_with
        backend.post_processor = processors.TemplateProcessing(
            single=f"{first} $A {last}", special_tokens=[(first, vocab[first]), (last, vocab[last])]
        )
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", **special_tokens)


def language_tokens(tokenizer, texts: Sequence[str], max_length: int, padding: str) -> dict[str, torch.Tensor]:
    """Language tokens and mask as LeRobot's ``TokenizerProcessorStep`` writes them: padded on the right
    (``padding="longest"`` or ``"max_length"``) and truncated to ``max_length``."""
    from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

    encoded = tokenizer(list(texts), padding=padding, padding_side="right", truncation=True, max_length=max_length,
                        return_tensors="pt")
    return {OBS_LANGUAGE_TOKENS: encoded["input_ids"], OBS_LANGUAGE_ATTENTION_MASK: encoded["attention_mask"].bool()}


def robot_features(*, state_dim: int, action_dim: int, cameras: int,
                   camera_shape: tuple[int, int, int]) -> dict[str, dict]:
    """``input_features`` (``observation.state``, then cameras ``observation.images.cam0`` ...) and
    ``output_features`` (``action``) for a LeRobot policy config."""
    from lerobot.configs.types import FeatureType, PolicyFeature

    inputs = {"observation.state": PolicyFeature(FeatureType.STATE, (state_dim,))}
    inputs.update({f"observation.images.cam{i}": PolicyFeature(FeatureType.VISUAL, tuple(camera_shape))
                   for i in range(cameras)})
    return {"input_features": inputs,
            "output_features": {"action": PolicyFeature(FeatureType.ACTION, (action_dim,))}}


def random_batch(policy, batch_size: int, seed: int, tasks: Sequence[str] | None,
                 tokenize: Callable[[list[str]], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A preprocessed batch for ``policy``: a random state, random [0, 1] images (not LeRobot's padded empty
    cameras) and ``tokenize(tasks)``.

    Tasks default to ``DEFAULT_TASKS`` in turn, which have different lengths, so the language padding matters.
    """
    from lerobot.configs.types import FeatureType

    g = torch.Generator().manual_seed(seed)
    batch = {}
    for key, feature in policy.config.input_features.items():
        if feature.type is FeatureType.VISUAL and "empty_camera" not in key:
            batch[key] = torch.rand((batch_size, *feature.shape), generator=g)
        elif feature.type is FeatureType.STATE:
            batch[key] = torch.randn((batch_size, *feature.shape), generator=g)
    if tasks is None:
        tasks = [DEFAULT_TASKS[i % len(DEFAULT_TASKS)] for i in range(batch_size)]
    batch.update(tokenize(list(tasks)))
    return batch


def save_with_processors(policy, preprocessor, postprocessor, directory: Path) -> Path:
    """``directory`` as LeRobot saves a policy checkpoint: config, weights and both processor pipelines."""
    for part in (policy, preprocessor, postprocessor):
        part.save_pretrained(directory)
    return directory


def save_state_diffusion_base(directory: Path, *, state_dim: int, env_dim: int, action_low: list[float],
                              action_high: list[float], n_obs_steps: int, seed: int = 0) -> Path:
    """A tiny random DiffusionPolicy reading ``observation.state`` and ``observation.environment_state`` (min-max
    stats over [-1, 1]) and acting in ``[action_low, action_high]``, saved with its processors."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors

    config = DiffusionConfig(
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (state_dim,)),
                        "observation.environment_state": PolicyFeature(FeatureType.ENV, (env_dim,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (len(action_low),))},
        n_obs_steps=n_obs_steps, horizon=8, n_action_steps=4, down_dims=(16, 32), kernel_size=3, n_groups=4,
        diffusion_step_embed_dim=16, device="cpu")
    torch.manual_seed(seed)
    span = lambda low, high: {"min": torch.tensor(low), "max": torch.tensor(high)}  # noqa: E731
    stats = {"observation.state": span([-1.0] * state_dim, [1.0] * state_dim),
             "observation.environment_state": span([-1.0] * env_dim, [1.0] * env_dim),
             "action": span(action_low, action_high)}
    return save_with_processors(DiffusionPolicy(config), *make_diffusion_pre_post_processors(config, dataset_stats=stats),
                                directory)


def save_gym_hil_diffusion_base(directory: Path, seed: int = 0) -> Path:
    """gym_hil's state observations (18-d robot, 3-d block), 4-d end-effector actions (deltas in [-1, 1], gripper
    0 / 1 / 2)."""
    return save_state_diffusion_base(directory, state_dim=18, env_dim=3, action_low=[-1.0, -1.0, -1.0, 0.0],
                                     action_high=[1.0, 1.0, 1.0, 2.0], n_obs_steps=1, seed=seed)


def save_pusht_diffusion_base(directory: Path, seed: int = 0, horizon: int = 8) -> Path:
    """A tiny random LeRobot DiffusionPolicy for PushT's ``environment_state_agent_pos`` observations (observation
    history of 2), saved with its processors (min-max stats over PushT's [0, 512] pixel coordinates)."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors

    config = DiffusionConfig(
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (2,)),
                        "observation.environment_state": PolicyFeature(FeatureType.ENV, (16,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
        n_obs_steps=2, horizon=horizon, n_action_steps=4, down_dims=(16, 32), kernel_size=3, n_groups=4,
        diffusion_step_embed_dim=16, device="cpu",
    )
    torch.manual_seed(seed)
    span = lambda n: {"min": torch.zeros(n), "max": torch.full((n,), 512.0)}  # noqa: E731
    stats = {"observation.state": span(2), "observation.environment_state": span(16), "action": span(2)}
    return save_with_processors(DiffusionPolicy(config), *make_diffusion_pre_post_processors(config, dataset_stats=stats),
                                directory)


def held_out_critic_losses(trainer, updates: int, batch_size: int = 32) -> tuple[float, float]:
    """Q^A's TD loss on the last quarter of the trainer's replay buffer (its later episodes), before and after
    ``updates`` critic-only updates on seeded batches of the first three quarters."""
    rows = len(trainer.buffer)
    split = int(0.75 * rows)
    fit = {key: value[:split] for key, value in trainer.buffer.storage.items()}
    held_out = {key: value[split:rows] for key, value in trainer.buffer.storage.items()}
    before = trainer.algo.action_critic_loss(held_out).item()
    generator = torch.Generator().manual_seed(0)
    for _ in range(updates):
        index = torch.randint(0, split, (batch_size,), generator=generator)
        trainer.algo.critic_update({key: value[index] for key, value in fit.items()})
    return before, trainer.algo.action_critic_loss(held_out).item()


def assert_base_frozen_through_backward(adapter, observation, noise: torch.Tensor, padded_from: int | None = None) -> None:
    """A backward through ``decode`` reaches the noise but leaves the adapter's policy untouched: eval mode, no
    parameter requires or receives a gradient, every tensor bit-identical. ``padded_from``: the first padded
    action dim of the noise, whose gradient must be non-zero too (the padded dims influence the real actions)."""
    policy = adapter.policy
    assert not policy.training and not any(p.requires_grad for p in policy.parameters())
    before = {name: t.clone() for name, t in policy.state_dict().items()}
    ctx = adapter.encode(observation)
    w = noise.requires_grad_(True)
    adapter.decode(ctx, w).square().sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
    if padded_from is not None:
        assert w.grad[..., padded_from:].abs().sum() > 0, "the padded noise dims influence the real actions"
    assert all(p.grad is None and not p.requires_grad for p in policy.parameters())
    after = policy.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def add_to_hf_cache(cache: Path, repo_id: str, commit: str, source: Path, ref: str | None = "main") -> Path:
    """Put ``source``'s files into a Hugging Face cache as huggingface_hub lays it out: content-addressed blobs,
    a snapshot directory of relative symlinks per commit, and refs/<branch> holding the commit hash."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        blob = hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, repo / "blobs" / blob)
        (snapshot / path.name).symlink_to(Path("..", "..", "blobs", blob))
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot
