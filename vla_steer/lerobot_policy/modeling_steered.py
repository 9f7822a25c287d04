"""``SteeredPolicy``: a frozen LeRobot policy whose initial noise a trained head picks, as a LeRobot policy.

Acting, per chunk: one ``adapter.encode`` (one VLM / observation-encoder pass) -> the head reads
``Context.features`` and returns a latent -> the latent layout expands it to the noise -> ``adapter.decode``
denoises from exactly that noise. Everything else is the base policy's own LeRobot behaviour:

* the caller applies the base's pre/post processors around ``select_action`` exactly as for the base
  (``lerobot-eval`` loads them from the steered directory, which carries copies of the base's files), so the
  policy itself sees normalised observations and returns normalised actions;
* ``select_action`` keeps a queue of ``n_action_steps`` actions and asks for a new chunk when it is empty;
  bases with an observation history (DiffusionPolicy, ``n_obs_steps > 1``) get LeRobot's history queues;
* ``predict_action_chunk`` returns what the base's ``predict_action_chunk`` returns for the chosen noise.

``noise=`` of ``select_action`` / ``predict_action_chunk`` is the *prior draw* ``eps`` in latent space
(``[B, *latent_shape]``), the analogue of the base's own ``noise=``: LP-DS acts with ``clip(eps + Delta(s))``,
DSRL with ``bound * tanh(mean + std * eps)``. With a zero Delta and a large enough bound the steered policy
is the base policy.

Directory format (``save_pretrained`` / ``from_pretrained``): LeRobot's ``config.json`` (type ``"steered"``,
naming the base), ``head.safetensors`` + ``head_config.json`` (as the trainer writes them) and the base's
``policy_preprocessor*`` / ``policy_postprocessor*`` files. JSON and safetensors only. The base's weights are
not copied: they are loaded from ``base_path`` (a local directory, absolute or relative to the steered
directory, or a Hub repo id at ``base_revision``).
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Any

import torch
from lerobot.configs.policies import PreTrainedConfig
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.policies.utils import populate_queues
from lerobot.utils.constants import ACTION
from torch import Tensor

from vla_steer.adapters.lerobot import adapter_for_lerobot_policy
from vla_steer.lerobot_policy.configuration_steered import SteeredConfig
from vla_steer.lerobot_policy.head import HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME, ActingHead, HeadFormatError

# Adapters whose encode accepts an observation history [B, n_obs_steps, ...]
HISTORY_FAMILIES = ("diffusion",)


def resolve_base_path(config: SteeredConfig, steered_dir: str | Path | None = None) -> str:
    """Where the base lives: a relative ``base_path`` is looked up in the steered directory first."""
    if not config.base_path or not config.base_type:
        raise ValueError("a steered policy config needs base_path and base_type (which frozen policy to steer)")
    path = Path(config.base_path).expanduser()
    if not path.is_absolute() and steered_dir is not None and (Path(steered_dir) / path).is_dir():
        return str(Path(steered_dir) / path)
    return str(path) if path.is_dir() else config.base_path  # otherwise a Hub repo id


def load_base_config(config: SteeredConfig, steered_dir: str | Path | None = None, **hub_kwargs) -> tuple[str, PreTrainedConfig]:
    source = resolve_base_path(config, steered_dir)
    base_config = PreTrainedConfig.from_pretrained(source, revision=config.base_revision, **hub_kwargs)
    if base_config.type != config.base_type:
        raise ValueError(f"steered config says base_type={config.base_type!r} but {source} holds a {base_config.type!r} policy")
    return source, base_config


def load_base_policy(config: SteeredConfig, steered_dir: str | Path | None = None, **hub_kwargs) -> tuple[str, PreTrainedPolicy]:
    """The frozen base, loaded the LeRobot way on the steered policy's device."""
    from lerobot.policies.factory import get_policy_class

    source, base_config = load_base_config(config, steered_dir, **hub_kwargs)
    base_config.device = config.device
    policy = get_policy_class(config.base_type).from_pretrained(source, config=base_config, revision=config.base_revision, **hub_kwargs)
    return source, policy


class SteeredPolicy(PreTrainedPolicy):
    """A frozen base policy + its adapter + the trained acting head, behind LeRobot's policy interface.

    Build one from a base policy and a trained head directory with :meth:`from_base`; reload a saved one with
    :meth:`from_pretrained` (or LeRobot's ``make_policy`` / ``lerobot-eval --policy.path=<dir>``).
    """

    config_class = SteeredConfig
    name = "steered"

    def __init__(self, config: SteeredConfig, base_policy: PreTrainedPolicy | None = None,
                 head: ActingHead | None = None, **kwargs: Any):
        super().__init__(config)
        if base_policy is None or head is None:
            raise ValueError("a steered policy wraps a trained head: load one with SteeredPolicy.from_pretrained(dir) "
                             "(lerobot: --policy.path=<dir>) or build one with SteeredPolicy.from_base(base, head_dir)")
        if base_policy.config.type != config.base_type:
            raise ValueError(f"base policy is a {base_policy.config.type!r}, config says base_type={config.base_type!r}")
        self.base = base_policy
        self.adapter = adapter_for_lerobot_policy(base_policy, **config.adapter_kwargs)  # freezes the base
        self.head = head
        self._check_compatible()
        self._base_source: str | None = None  # where the base was loaded from (for its processor files)
        self._processors: tuple[Any, Any] | None = None
        self.reset()

    def _check_compatible(self) -> None:
        adapter, head, raw = self.adapter, self.head, self.head.raw_config
        problems = []
        if raw.get("adapter") not in (None, adapter.family):
            problems.append(f"head was trained on a {raw['adapter']!r} adapter, the base needs {adapter.family!r}")
        if tuple(head.layout.noise_shape) != tuple(adapter.noise_shape):
            problems.append(f"head noise_shape {list(head.layout.noise_shape)} != base noise_shape {list(adapter.noise_shape)}")
        if head.feature_dim != adapter.feature_dim:
            problems.append(f"head feature_dim {head.feature_dim} != adapter feature_dim {adapter.feature_dim} "
                            f"(adapter_kwargs={self.config.adapter_kwargs}: check pooling / feature options)")
        n_obs_steps = getattr(self.base.config, "n_obs_steps", 1)
        if n_obs_steps > 1 and adapter.family not in HISTORY_FAMILIES:
            problems.append(f"n_obs_steps={n_obs_steps} is not supported for {adapter.family!r} bases")
        if problems:
            raise HeadFormatError("head does not fit this base policy: " + "; ".join(problems))

    # ------------------------------------------------------------------------------------------------
    # construction and files
    @classmethod
    def from_base(cls, base_policy: PreTrainedPolicy, head: ActingHead | str | Path, *, base_path: str | Path,
                  base_revision: str | None = None, adapter_kwargs: dict[str, Any] | None = None,
                  deterministic: bool = False, preprocessor=None, postprocessor=None) -> "SteeredPolicy":
        """Wrap ``base_policy`` (saved at / published as ``base_path``) with a head (an :class:`ActingHead` or a
        directory with ``head_config.json`` + ``head.safetensors``). ``preprocessor`` / ``postprocessor``: the
        base's processors to save alongside; by default they are read from ``base_path`` when saving."""
        if not isinstance(head, ActingHead):
            head = ActingHead.from_dir(head)
        base_config = base_policy.config
        config = SteeredConfig(
            base_path=str(base_path), base_revision=base_revision, base_type=base_config.type,
            adapter_kwargs=dict(adapter_kwargs or {}), deterministic=deterministic, device=base_config.device,
            n_obs_steps=base_config.n_obs_steps, input_features=dict(base_config.input_features),
            output_features=dict(base_config.output_features),
        )
        policy = cls(config, base_policy=base_policy, head=head.to(next(base_policy.parameters()).device))
        policy._base_source = resolve_base_path(config)
        if (preprocessor is None) != (postprocessor is None):
            raise ValueError("give both preprocessor and postprocessor, or neither")
        if preprocessor is not None:
            policy._processors = (preprocessor, postprocessor)
        return policy

    @classmethod
    def from_pretrained(cls, pretrained_name_or_path: str | Path, *, config: SteeredConfig | None = None,
                        force_download: bool = False, resume_download: bool | None = None, proxies: dict | None = None,
                        token: str | bool | None = None, cache_dir: str | Path | None = None,
                        local_files_only: bool = False, revision: str | None = None, strict: bool = True,
                        **kwargs: Any) -> "SteeredPolicy":
        """Load a steered directory (local or Hub): its head, and the base it names."""
        hub = dict(force_download=force_download, proxies=proxies, token=token, cache_dir=cache_dir,
                   local_files_only=local_files_only)
        if config is None:
            config = PreTrainedConfig.from_pretrained(pretrained_name_or_path, revision=revision, **hub)
        if not isinstance(config, SteeredConfig):
            raise ValueError(f"{pretrained_name_or_path} holds a {config.type!r} policy, not a steered one")
        model_id = str(pretrained_name_or_path)
        local = os.path.isdir(model_id)
        if local:
            files = {name: os.path.join(model_id, name) for name in (HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME)}
            missing = [name for name, path in files.items() if not os.path.isfile(path)]
            if missing:
                raise FileNotFoundError(f"{model_id} is not a steered policy directory: missing {missing}")
        else:
            from huggingface_hub import hf_hub_download

            files = {name: hf_hub_download(model_id, name, revision=revision, **hub)
                     for name in (HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME)}
        head = ActingHead.from_dir(Path(files[HEAD_CONFIG_NAME]).parent)
        # A relative base_path is resolved against a local steered directory only (Hub bases are repo ids).
        base_source, base = load_base_policy(config, model_id if local else None, **hub)
        policy = cls(config, base_policy=base, head=head)
        policy._base_source = base_source
        policy.to(config.device)
        policy.eval()
        return policy

    def base_processors(self) -> tuple[Any, Any]:
        """The base's (preprocessor, postprocessor), as LeRobot loads them for the base."""
        if self._processors is not None:
            return self._processors
        from lerobot.processor import PolicyProcessorPipeline
        from lerobot.processor.converters import (batch_to_transition, policy_action_to_transition,
                                                  transition_to_batch, transition_to_policy_action)
        from lerobot.utils.constants import POLICY_POSTPROCESSOR_DEFAULT_NAME, POLICY_PREPROCESSOR_DEFAULT_NAME

        source = self._base_source or resolve_base_path(self.config)
        try:
            pre = PolicyProcessorPipeline.from_pretrained(
                source, f"{POLICY_PREPROCESSOR_DEFAULT_NAME}.json", revision=self.config.base_revision,
                to_transition=batch_to_transition, to_output=transition_to_batch)
            post = PolicyProcessorPipeline.from_pretrained(
                source, f"{POLICY_POSTPROCESSOR_DEFAULT_NAME}.json", revision=self.config.base_revision,
                to_transition=policy_action_to_transition, to_output=transition_to_policy_action)
        except Exception as exc:  # LeRobot raises several types for a missing file (local or Hub)
            raise FileNotFoundError(
                f"the base at {source} has no loadable policy_preprocessor.json / policy_postprocessor.json ({exc}); "
                "save the base with its processors, or pass preprocessor= / postprocessor= to SteeredPolicy.from_base"
            ) from exc
        self._processors = (pre, post)
        return self._processors

    def _save_pretrained(self, save_directory: Path) -> None:
        """``config.json`` + the head's two files + the base's processor files (no base weights)."""
        preprocessor, postprocessor = self.base_processors()
        self.config._save_pretrained(save_directory)
        self.head.save(save_directory)
        preprocessor.save_pretrained(save_directory)
        postprocessor.save_pretrained(save_directory)

    # ------------------------------------------------------------------------------------------------
    # acting
    @property
    def n_action_steps(self) -> int:
        return self.adapter.n_action_steps

    def reset(self) -> None:
        """Clear the action queue and the observation history (call on every env reset)."""
        self._queues = {ACTION: deque(maxlen=self.n_action_steps)}
        n_obs_steps = getattr(self.base.config, "n_obs_steps", 1)
        if n_obs_steps > 1:
            for key in self.base.config.input_features:
                self._queues[key] = deque(maxlen=n_obs_steps)

    def _observation(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The adapter's input: the batch, with LeRobot's observation history where the base keeps one."""
        batch = {key: value for key, value in batch.items() if key != ACTION}  # offline eval batches carry actions
        self._queues = populate_queues(self._queues, batch, exclude_keys=[ACTION])
        for key, queue in self._queues.items():
            if key != ACTION and key in batch:
                batch[key] = torch.stack(list(queue), dim=1)  # [B, n_obs_steps, ...], oldest first
        return batch

    def _chunk(self, observation: dict[str, Tensor], noise: Tensor | None, deterministic: bool | None) -> Tensor:
        context = self.adapter.encode(observation)  # the one expensive pass
        deterministic = self.config.deterministic if deterministic is None else deterministic
        latent = self.head(context.features.float(), eps=noise, deterministic=deterministic)
        return self.adapter.decode(context, self.head.layout.to_noise(latent))

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Tensor], noise: Tensor | None = None,
                             deterministic: bool | None = None) -> Tensor:
        """The base's chunk for the noise the head picks (``noise``: the prior draw ``eps``, see the module doc)."""
        self.eval()
        return self._chunk(self._observation(batch), noise, deterministic)

    @torch.no_grad()
    def select_action(self, batch: dict[str, Tensor], noise: Tensor | None = None,
                      deterministic: bool | None = None) -> Tensor:
        """One action per call from a queue of ``n_action_steps``; a new chunk when the queue is empty."""
        self.eval()
        observation = self._observation(batch)
        if len(self._queues[ACTION]) == 0:
            chunk = self._chunk(observation, noise, deterministic)
            # [B, rows, A] -> queue of [B, A], as LeRobot's policies do
            self._queues[ACTION].extend(chunk.transpose(0, 1)[: self.n_action_steps])
        return self._queues[ACTION].popleft()

    # ------------------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict | None]:
        raise NotImplementedError("steering heads are trained with vla-steer's RL trainer, not with lerobot-train")

    def get_optim_params(self):
        return self.head.parameters()
