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

Directory format (``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``; spec in ``hub/FORMAT.md``): LeRobot's
``config.json`` (type ``"steered"``, naming the base), ``head.safetensors`` + ``head_config.json`` (format 1: the
base's name, revision, type, fingerprint, feature options, training record) and the base's
``policy_preprocessor*`` / ``policy_postprocessor*`` files, plus ``README.md`` when pushed or saved with
``model_card=True``. JSON and safetensors only, every file checked before use (``vla_steer.hub.validate_directory``).
The base's weights are not copied: they are loaded from ``base_path`` (a local directory, absolute or relative to
the steered directory, or a Hub repo id at ``base_revision``), and the head refuses a base whose fingerprint or
shapes differ from what it was trained on.
"""

from __future__ import annotations

import os
import tempfile
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
from vla_steer.hub.api import (BASE_PATTERNS, base_record, check_base_config_file, push_directory, resolve_repo,
                               validate_directory, write_model_card)
from vla_steer.hub.format import LOAD_PATTERNS, check_processor_config
from vla_steer.hub.head_files import write_directory, write_head
from vla_steer.hub.schema import shared_head_config
from vla_steer.lerobot_policy.configuration_steered import SteeredConfig
from vla_steer.lerobot_policy.action_limits import with_action_limits
from vla_steer.lerobot_policy.head import ActingHead, HeadFormatError
from vla_steer.robot.safety import finite_latent

# Adapters whose encode accepts an observation history [B, n_obs_steps, ...]
HISTORY_FAMILIES = ("diffusion",)


def resolve_base_path(config: SteeredConfig, steered_dir: str | Path | None = None) -> str:
    """Where the base lives: an absolute directory; a relative one inside the steered directory (looked up there
    first, and never allowed to climb out of it with ``..``); a directory relative to the working directory; or
    else a Hub repo id."""
    if not config.base_path or not config.base_type:
        raise ValueError("a steered policy config needs base_path and base_type (which frozen policy to steer)")
    path = Path(config.base_path).expanduser()
    if not path.is_absolute() and ".." in path.parts:
        raise HeadFormatError(f"config.json: base_path {config.base_path!r} climbs out of the steered directory; give "
                              "an absolute path, a path inside the directory, or a Hub repo id")
    if not path.is_absolute() and steered_dir is not None and (Path(steered_dir) / path).is_dir():
        return str(Path(steered_dir) / path)
    return str(path) if path.is_dir() else config.base_path  # otherwise a Hub repo id


def read_steered_config(directory: str | Path) -> SteeredConfig:
    """``config.json`` of a (checked) steered directory parsed as LeRobot parses it, so whatever LeRobot would refuse
    (an unknown field, ``best_of_k: 0``) is refused here, naming the file."""
    try:
        config = PreTrainedConfig.from_pretrained(directory)
    except Exception as exc:  # draccus wraps the error that says what is wrong in a general one: show that one
        cause = exc
        while (cause.__cause__ or cause.__context__) is not None:
            cause = cause.__cause__ or cause.__context__
        detail = f"{type(exc).__name__}: {exc}" + (f" ({cause})" if cause is not exc else "")
        raise HeadFormatError(f"config.json in {directory} is not a config LeRobot can load: {detail[:600]}") from None
    if not isinstance(config, SteeredConfig):
        raise HeadFormatError(f"{directory} holds a {config.type!r} policy, not a steered one")
    return config


def base_directory(config: SteeredConfig, steered_dir: str | Path | None = None, **hub_kwargs) -> Path:
    """The base's files on disk: its local directory, or a snapshot of its config, weights and processor files
    (nothing else) from the Hub or its cache at ``base_revision``. Its ``config.json`` is checked as JSON first."""
    directory = resolve_repo(resolve_base_path(config, steered_dir), revision=config.base_revision,
                             patterns=BASE_PATTERNS, **hub_kwargs)
    check_base_config_file(directory, "lerobot")
    return directory


def load_base_config(config: SteeredConfig, steered_dir: str | Path | None = None, **hub_kwargs) -> tuple[str, PreTrainedConfig]:
    source = base_directory(config, steered_dir, **hub_kwargs)
    base_config = PreTrainedConfig.from_pretrained(source)
    if base_config.type != config.base_type:
        raise ValueError(f"steered config says base_type={config.base_type!r} but {source} holds a {base_config.type!r} policy")
    return str(source), base_config


def load_base_policy(config: SteeredConfig, steered_dir: str | Path | None = None, **hub_kwargs) -> tuple[str, PreTrainedPolicy]:
    """The frozen base, loaded the LeRobot way on the steered policy's device."""
    from lerobot.policies.factory import get_policy_class

    source, base_config = load_base_config(config, steered_dir, **hub_kwargs)
    base_config.device = config.device
    policy = get_policy_class(config.base_type).from_pretrained(source, config=base_config)
    return source, policy


class SteeredPolicy(PreTrainedPolicy):
    """A frozen base policy + its adapter + the trained acting head, behind LeRobot's policy interface.

    Build one from a base policy and a trained head directory with :meth:`from_base`; reload a saved one with
    :meth:`from_pretrained` (or LeRobot's ``make_policy`` / ``lerobot-eval --policy.path=<dir>``).
    """

    config_class = SteeredConfig
    name = "steered"

    def __init__(self, config: SteeredConfig, base_policy: PreTrainedPolicy | None = None,
                 head: ActingHead | None = None, *, allow_base_mismatch: bool = False, **kwargs: Any):
        super().__init__(config)
        if base_policy is None or head is None:
            raise ValueError("a steered policy wraps a trained head: load one with SteeredPolicy.from_pretrained(dir) "
                             "(lerobot: --policy.path=<dir>) or build one with SteeredPolicy.from_base(base, head_dir)")
        if base_policy.config.type != config.base_type:
            raise ValueError(f"base policy is a {base_policy.config.type!r}, config says base_type={config.base_type!r}")
        self.base = base_policy
        self.adapter = adapter_for_lerobot_policy(base_policy, **config.adapter_kwargs)  # freezes the base
        self.head = head
        self._check_compatible(allow_base_mismatch)
        self._base_source: str | None = None  # where the base was loaded from (for its processor files)
        self._processors: tuple[Any, Any] | None = None
        self.reset()

    def _check_compatible(self, allow_base_mismatch: bool = False) -> None:
        """Shapes must fit; the base must be the one the head was trained on (fingerprint, feature options) unless
        ``allow_base_mismatch`` (a loud warning then)."""
        problems = self.head.fit_problems(self.adapter)
        if self.head.feature_dim != self.adapter.feature_dim:
            problems[-1] += f" (adapter_kwargs={self.config.adapter_kwargs}: check pooling / feature options)"
        n_obs_steps = getattr(self.base.config, "n_obs_steps", 1)
        if n_obs_steps > 1 and self.adapter.family not in HISTORY_FAMILIES:
            problems.append(f"n_obs_steps={n_obs_steps} is not supported for {self.adapter.family!r} bases")
        if self.config.best_of_k > 1 and self.head.critic is None:
            problems.append(f"best_of_k={self.config.best_of_k} needs a head that ships its critic (critic.* tensors, "
                            "written by the trainer); set best_of_k=1 for this head")
        if problems:
            raise HeadFormatError("head does not fit this base policy: " + "; ".join(problems))
        self.head.check_base(self.adapter, self.config.adapter_kwargs, allow_base_mismatch)

    # ------------------------------------------------------------------------------------------------
    # construction and files
    @classmethod
    def from_base(cls, base_policy: PreTrainedPolicy, head: ActingHead | str | Path, *, base_path: str | Path,
                  base_revision: str | None = None, adapter_kwargs: dict[str, Any] | None = None,
                  deterministic: bool = False, best_of_k: int = 1, preprocessor=None, postprocessor=None,
                  allow_base_mismatch: bool = False, action_limits: dict[str, Any] | None = None) -> "SteeredPolicy":
        """Wrap ``base_policy`` (saved at / published as ``base_path``) with a head (an :class:`ActingHead`, a
        directory with ``head_config.json`` + ``head.safetensors``, or a Hub repo id of a shared head).
        ``preprocessor`` / ``postprocessor``: the base's processors to save alongside; by default they are read
        from ``base_path`` when saving. A head that records its base's fingerprint refuses another base unless
        ``allow_base_mismatch``. ``action_limits`` (``action_low`` / ``action_high`` / ``max_action_step``, the
        recipe's ``safety`` values) end the saved postprocessor, so every LeRobot route enforces them."""
        if not isinstance(head, ActingHead):
            head = ActingHead.from_dir(head) if Path(str(head)).expanduser().is_dir() else ActingHead.from_pretrained(head)
        base_config = base_policy.config
        config = SteeredConfig(
            base_path=str(base_path), base_revision=base_revision, base_type=base_config.type,
            adapter_kwargs=dict(adapter_kwargs or {}), deterministic=deterministic, best_of_k=best_of_k,
            action_limits={k: v for k, v in (action_limits or {}).items() if v is not None}, device=base_config.device,
            n_obs_steps=base_config.n_obs_steps, input_features=dict(base_config.input_features),
            output_features=dict(base_config.output_features),
        )
        policy = cls(config, base_policy=base_policy, head=head.to(next(base_policy.parameters()).device),
                     allow_base_mismatch=allow_base_mismatch)
        policy._base_source = resolve_base_path(config)
        if (preprocessor is None) != (postprocessor is None):
            raise ValueError("give both preprocessor and postprocessor, or neither")
        if preprocessor is not None:
            policy._processors = (preprocessor, with_action_limits(postprocessor, config.action_limits))
        return policy

    @classmethod
    def from_pretrained(cls, pretrained_name_or_path: str | Path, *, config: SteeredConfig | None = None,
                        force_download: bool = False, resume_download: bool | None = None, proxies: dict | None = None,
                        token: str | bool | None = None, cache_dir: str | Path | None = None,
                        local_files_only: bool = False, revision: str | None = None, strict: bool = True,
                        base_policy: PreTrainedPolicy | None = None, allow_base_mismatch: bool = False,
                        **kwargs: Any) -> "SteeredPolicy":
        """Load a steered directory (local, or a Hub repo id at ``revision``): its head, and the base it names
        (at the revision its config names) unless ``base_policy`` is given.

        From the Hub only the format's files are downloaded (``huggingface_hub.snapshot_download`` with
        ``allow_patterns``; ``HF_HUB_OFFLINE=1`` reads the cache). Every file is checked before LeRobot or torch
        parses it (``vla_steer.hub.validate_directory``). The head refuses a base whose shapes differ, and one
        whose fingerprint differs unless ``allow_base_mismatch`` (or ``VLA_STEER_ALLOW_BASE_MISMATCH=1``, for
        ``lerobot-eval``), which logs a loud warning instead.
        """
        hub = dict(force_download=force_download, proxies=proxies, token=token, cache_dir=cache_dir,
                   local_files_only=local_files_only)
        model_id = str(pretrained_name_or_path)
        local = os.path.isdir(model_id)
        directory = resolve_repo(model_id, revision=revision, patterns=LOAD_PATTERNS, **hub)
        checked = validate_directory(directory)
        if checked.policy_config is None:
            raise FileNotFoundError(f"{model_id} holds a steering head without a LeRobot config.json (a head on a "
                                    "non-LeRobot base): load it with vla_steer.lerobot_policy.load_steered")
        if config is None:
            config = read_steered_config(directory)
        if not isinstance(config, SteeredConfig):
            raise ValueError(f"{pretrained_name_or_path} holds a {config.type!r} policy, not a steered one")
        if base_policy is None:
            # A relative base_path is resolved against a local steered directory only (Hub bases are repo ids).
            base_source, base_policy = load_base_policy(config, model_id if local else None, **hub)
        else:
            base_source = None
        policy = cls(config, base_policy=base_policy, head=ActingHead.from_checked(checked),
                     allow_base_mismatch=allow_base_mismatch)
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

        try:
            source = resolve_repo(self._base_source or resolve_base_path(self.config), revision=self.config.base_revision,
                                  patterns=BASE_PATTERNS)
            for name in (f"{POLICY_PREPROCESSOR_DEFAULT_NAME}.json", f"{POLICY_POSTPROCESSOR_DEFAULT_NAME}.json"):
                check_processor_config(Path(source) / name)  # no step may name a class to import
            pre = PolicyProcessorPipeline.from_pretrained(
                str(source), f"{POLICY_PREPROCESSOR_DEFAULT_NAME}.json",
                to_transition=batch_to_transition, to_output=transition_to_batch)
            post = PolicyProcessorPipeline.from_pretrained(
                str(source), f"{POLICY_POSTPROCESSOR_DEFAULT_NAME}.json",
                to_transition=policy_action_to_transition, to_output=transition_to_policy_action)
        except HeadFormatError:
            raise
        except Exception as exc:  # LeRobot raises several types for a missing file (local or Hub)
            raise FileNotFoundError(
                f"the base at {self._base_source or self.config.base_path} has no loadable policy_preprocessor.json / "
                f"policy_postprocessor.json ({exc}); save the base with its processors, or pass preprocessor= / "
                "postprocessor= to SteeredPolicy.from_base"
            ) from exc
        self._processors = (pre, with_action_limits(post, self.config.action_limits))
        return self._processors

    def hub_head_config(self) -> dict:
        """The format-1 ``head_config.json`` of this head on this base (fingerprint, feature options, training)."""
        return shared_head_config(self.head.raw_config, base_record(
            self.adapter, base_model_name_or_path=self.config.base_path, revision=self.config.base_revision,
            adapter_kwargs=self.config.adapter_kwargs), self.head.training_record)

    def save_pretrained(self, save_directory: str | Path, *, repo_id: str | None = None, push_to_hub: bool = False,
                        card_kwargs: dict[str, Any] | None = None, model_card: bool = False, **push_to_hub_kwargs) -> Any:
        """Write the steered directory under a temporary name and rename it into place (a directory that holds
        other files is not replaced). ``model_card=True`` adds ``README.md`` (``push_to_hub`` always does)."""
        write_directory(save_directory, lambda tmp: self._save_pretrained(tmp, model_card=model_card,
                                                                            card_kwargs=card_kwargs))
        if push_to_hub:
            return self.push_to_hub(repo_id or Path(save_directory).name, card_kwargs=card_kwargs, **push_to_hub_kwargs)
        return None

    def _save_pretrained(self, save_directory: Path, model_card: bool = False, card_kwargs: dict | None = None) -> None:
        """``config.json`` + the head's files (format 1) + the base's processor files (no base weights)."""
        preprocessor, postprocessor = self.base_processors()
        head_config = self.hub_head_config()
        self.config._save_pretrained(save_directory)
        write_head(save_directory, self.head.head_modules(), head_config, extra_files=self.head.extra_files, atomic=False)
        preprocessor.save_pretrained(save_directory)
        postprocessor.save_pretrained(save_directory)
        if model_card:
            write_model_card(save_directory, head_config, num_parameters=self.head.num_parameters, card_kwargs=card_kwargs)

    def push_to_hub(self, repo_id: str, *, commit_message: str | None = None, private: bool | None = None,
                    token: str | None = None, branch: str | None = None, create_pr: bool | None = None,
                    card_kwargs: dict[str, Any] | None = None) -> Any:
        """Save to a temporary directory (model card included) and upload exactly its files in one commit
        (``vla_steer.hub.push_directory``; the Hub endpoint is huggingface_hub's, ``HF_ENDPOINT`` for a mirror).
        Returns huggingface_hub's ``CommitInfo``."""
        card_kwargs = {"repo_id": repo_id, **(card_kwargs or {})}
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp) / "steered"
            self.save_pretrained(directory, model_card=True, card_kwargs=card_kwargs)
            return push_directory(directory, repo_id, commit_message=commit_message, private=private, token=token,
                                  branch=branch, create_pr=create_pr, card_kwargs=card_kwargs)

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

    def _chunk(self, observation: dict[str, Tensor], noise: Tensor | None, deterministic: bool | None,
               executed_only: bool) -> Tensor:
        context = self.adapter.encode(observation)  # the one expensive pass
        deterministic = self.config.deterministic if deterministic is None else deterministic
        features, k = context.features.float(), self.config.best_of_k
        if k > 1:  # the shipped critic ranks k proposals on the same features; only the chosen one is decoded
            latent = self.head.best_of_k(features, k, eps=noise, deterministic=deterministic)
        else:
            latent = self.head(features, eps=noise, deterministic=deterministic)
        # as in the actor: a non-finite latent never reaches the base; the prior draw (the base's own noise) replaces it
        prior = noise if noise is not None and k == 1 else torch.randn(latent.shape, device=latent.device)
        latent, _ = finite_latent(latent, self.head.bound, prior)
        noise = self.head.layout.to_noise(latent)
        return self.adapter.decode(context, noise) if executed_only else self.adapter.predict_action_chunk(context, noise)

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Tensor], noise: Tensor | None = None,
                             deterministic: bool | None = None) -> Tensor:
        """The base's chunk for the noise the head picks (``noise``: the prior draw ``eps``, see the module doc;
        with ``config.best_of_k = K > 1`` one draw per proposal, ``[B * K, ...]``)."""
        self.eval()
        return self._chunk(self._observation(batch), noise, deterministic, executed_only=False)

    @torch.no_grad()
    def select_action(self, batch: dict[str, Tensor], noise: Tensor | None = None,
                      deterministic: bool | None = None) -> Tensor:
        """One action per call from a queue of ``n_action_steps``; a new chunk when the queue is empty."""
        self.eval()
        observation = self._observation(batch)
        if len(self._queues[ACTION]) == 0:
            chunk = self._chunk(observation, noise, deterministic, executed_only=True)
            self._queues[ACTION].extend(chunk.transpose(0, 1))  # [B, rows, A] -> queue of [B, A], as LeRobot's policies do
        return self._queues[ACTION].popleft()

    # ------------------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict | None]:
        raise NotImplementedError("steering heads are trained with vla-steer's RL trainer, not with lerobot-train")

    def get_optim_params(self):
        return self.head.parameters()
