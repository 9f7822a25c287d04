"""``ActingHead``: the acting part of a trained steering head, rebuilt from its ``head_config.json`` alone.

A head directory holds ``head_config.json`` (the algorithm, the architecture, the noise / latent shapes, the feature
width; format 1 adds the base it was trained on: name, revision, type, library version, fingerprint, feature
options, hyper-parameters, training metrics) and ``head.safetensors`` (``"<module>.<param>"``). The format, its
checks and its one reader / writer are ``vla_steer.hub`` (spec in ``hub/FORMAT.md``); this class sits above it: it
builds the modules a config describes (``vla_steer.hub.schema.build_head_modules``) and acts through the same
acting rule the algorithm used in training (``vla_steer.steering.ACTING_RULES``):

* ``lpds``: ``z = clip(eps + Delta(s), +-bound)``, ``eps ~ N(0, I)``; deterministic: ``eps = 0``.
* ``dsrl_sac`` / ``dsrl_na``: ``z = bound * tanh(mean(s) + std(s) * eps)``; deterministic: ``bound * tanh(mean(s))``.

Heads written by the trainer also ship the latent critic Q^W(s, z) (``"critic": "latent"``, tensors ``critic.*``;
a few hundred kB) so that a deployed policy can pick the best of K proposals (:meth:`ActingHead.best_of_k`).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vla_steer.adapters.base import LatentLayout
from vla_steer.hub.api import (HeadDirectory, base_record, library_for_family, load_base_adapter, push_directory,
                               resolve_repo, training_record, write_model_card)
from vla_steer.hub.fingerprint import FULL, base_fingerprint, compare_fingerprints
from vla_steer.hub.format import (DEFAULT_LIMITS, HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME, LEARNING_CURVE_NAME,
                                  BaseMismatchError, HeadFormatError, Limits, to_json_safe)
from vla_steer.hub.head_files import read_head, write_directory, write_head
from vla_steer.hub.schema import (build_head_modules, canonical_head_config, mismatch_message, shared_head_config,
                                  tensor_problems, validate_head_config)
from vla_steer.steering import ACTING_RULES, ActingRule

__all__ = ["ActingHead", "BaseMismatchError", "HeadFormatError", "validate_head_config", "HEAD_CONFIG_NAME",
           "HEAD_WEIGHTS_NAME"]

logger = logging.getLogger(__name__)

ALLOW_MISMATCH_ENV = "VLA_STEER_ALLOW_BASE_MISMATCH"


def _allow_mismatch(allow: bool) -> bool:
    return allow or os.environ.get(ALLOW_MISMATCH_ENV, "") == "1"


class ActingHead(nn.Module):
    """The trained acting module of one algorithm: features ``[B, F]`` -> latent ``[B, latent_dim]``."""

    def __init__(self, head_config: dict[str, Any]):
        super().__init__()
        config = validate_head_config(head_config)
        head = config["head"]
        self.algorithm = config["algorithm"]
        self.raw_config = canonical_head_config(head_config)
        self.layout = LatentLayout.from_head(head, config["noise_shape"])
        self.feature_dim, self.bound = int(config["feature_dim"]), float(head.bound)
        # the algorithm's acting module ("delta" / "actor") and, if shipped, the latent critic Q^W(s, z) ("critic"),
        # as the format describes them: the same modules, so the same tensor names, as the algorithm trained
        self.critic: nn.Module | None = None
        for name, module in build_head_modules(self.raw_config).items():
            setattr(self, name, module)
        self.requires_grad_(False)
        # Training record not stored in format 0 (set by from_run): {"hyperparameters", "training"}, and extra
        # files to ship with a shared head ({"learning_curve.png": path}).
        self.training_record: dict[str, Any] = {k: config[k] for k in ("hyperparameters", "training") if k in config}
        self.extra_files: dict[str, Path] = {}

    @property
    def rule(self) -> ActingRule:
        """The algorithm's acting rule, shared with training (``vla_steer.steering.ACTING_RULES``)."""
        return ACTING_RULES[self.algorithm]

    @property
    def acting_module(self) -> nn.Module:
        """LP-DS's Delta(s) (``delta``) or DSRL's tanh-Gaussian actor (``actor``)."""
        return getattr(self, self.rule.module)

    @property
    def latent_dim(self) -> int:
        return self.layout.latent_dim

    @property
    def format_version(self) -> int:
        return int(self.raw_config.get("format_version", 0))

    @property
    def base_name(self) -> str | None:
        return self.raw_config.get("base_model_name_or_path")

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.state_dict().values())

    def head_modules(self) -> dict[str, nn.Module]:
        """The modules whose tensors ``head.safetensors`` holds, by name (as ``SteeringAlgorithm.head_modules()``,
        plus ``critic`` when shipped)."""
        return dict(self.named_children())

    def forward(self, features: torch.Tensor, eps: torch.Tensor | None = None, deterministic: bool = False) -> torch.Tensor:
        """The latent for ``features``. ``eps`` (``[B, *latent_shape]`` or flat) fixes the standard-normal draw."""
        if eps is not None and not deterministic:
            eps = eps.reshape(features.shape[0], self.latent_dim).to(device=features.device, dtype=torch.float32)
        return self.rule.act(self.acting_module, features, self.bound, eps, deterministic)

    def best_of_k(self, features: torch.Tensor, k: int, eps: torch.Tensor | None = None,
                  deterministic: bool = False) -> torch.Tensor:
        """One latent per row of ``features``: the best of ``k`` proposals by the shipped critic's mean over its
        heads. ``eps`` (``[B * k, latent_dim]``, rows grouped per observation) fixes the proposals' prior draws."""
        if self.critic is None:
            raise ValueError("this head ships no critic, so it cannot rank proposals: export it from a training run "
                             "made with this vla_steer version (its head/ includes critic.* tensors), or use best_of_k=1")
        if k < 1:
            raise ValueError(f"best-of-K needs k >= 1, got {k}")
        batch = features.shape[0]
        repeated = features.repeat_interleave(k, dim=0)
        proposals = self(repeated, eps=eps, deterministic=deterministic)
        q = self.critic.reduce(self.critic(repeated, proposals), "mean").view(batch, k)
        return proposals.view(batch, k, -1)[torch.arange(batch, device=q.device), q.argmax(dim=1)]

    # ------------------------------------------------------------------------------------------------
    # which base it fits
    def fit_problems(self, adapter) -> list[str]:
        """Why this head cannot act on ``adapter``'s base at all (family, noise shape, feature width)."""
        raw, problems = self.raw_config, []
        if raw.get("adapter") not in (None, adapter.family):
            problems.append(f"head was trained on a {raw['adapter']!r} adapter, the base needs {adapter.family!r}")
        if tuple(self.layout.noise_shape) != tuple(adapter.noise_shape):
            problems.append(f"head noise_shape {list(self.layout.noise_shape)} != base noise_shape {list(adapter.noise_shape)}")
        if self.feature_dim != adapter.feature_dim:
            problems.append(f"head feature_dim {self.feature_dim} != adapter feature_dim {adapter.feature_dim}")
        return problems

    def base_differences(self, adapter, adapter_kwargs: dict | None = None) -> list[str]:
        """How ``adapter``'s base differs from the recorded one (fingerprint, feature options); empty if it matches
        or if the head records nothing to compare (a format-0 head without a fingerprint)."""
        raw, differences = self.raw_config, []
        features = raw.get("features")
        if features is not None:
            if adapter_kwargs is not None and to_json_safe(adapter_kwargs) != features["adapter_kwargs"]:
                differences.append(f"head was trained with adapter_kwargs {features['adapter_kwargs']}, the base is "
                                   f"adapted with {to_json_safe(adapter_kwargs)}")
            pooling = getattr(adapter, "pooling", None)
            if features["pooling"] != (pooling if isinstance(pooling, str) else None):
                differences.append(f"head was trained on {features['pooling']!r} pooled features, the adapter pools {pooling!r}")
        recorded = raw.get("base_fingerprint")
        if recorded is not None:
            differences += compare_fingerprints(recorded, base_fingerprint(adapter, full=recorded["method"] == FULL))
        return differences

    def check_base(self, adapter, adapter_kwargs: dict | None = None, allow_base_mismatch: bool = False) -> None:
        """Refuse a base this head was not trained on.

        Shape problems (:meth:`fit_problems`) are always errors. A different fingerprint or feature option is a
        :class:`BaseMismatchError` unless ``allow_base_mismatch`` (or ``VLA_STEER_ALLOW_BASE_MISMATCH=1``), in
        which case it is a loud warning.
        """
        problems = self.fit_problems(adapter)
        if problems:
            raise HeadFormatError("head does not fit this base policy: " + "; ".join(problems))
        differences = self.base_differences(adapter, adapter_kwargs)
        if not differences:
            if "base_fingerprint" not in self.raw_config:
                logger.info("this head records no base fingerprint (format 0): the base cannot be verified")
            return
        message = (f"this head was trained on another base than the one given (recorded: "
                   f"{self.base_name or 'unnamed base'}): " + "; ".join(differences))
        if not _allow_mismatch(allow_base_mismatch):
            raise BaseMismatchError(message + f". If you are sure, pass allow_base_mismatch=True (vla-steer: "
                                              f"--allow-base-mismatch; environment: {ALLOW_MISMATCH_ENV}=1)")
        loud = f"BASE MISMATCH OVERRIDDEN: {message}. Its actions may be meaningless on this base."
        warnings.warn(loud, UserWarning, stacklevel=3)
        logger.warning(loud)

    # ------------------------------------------------------------------------------------------------
    # files
    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load ``head.safetensors`` contents; any missing, unexpected or wrongly shaped tensor is an error."""
        problems = tensor_problems({k: tuple(v.shape) for k, v in self.state_dict().items()},
                                   {k: tuple(v.shape) for k, v in tensors.items()})
        if problems:
            raise HeadFormatError(mismatch_message(self.raw_config, problems))
        self.load_state_dict(tensors, strict=True)

    @classmethod
    def from_state(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "ActingHead":
        """Build from a ``head_config.json`` dict and the tensors of its ``head.safetensors``."""
        head = cls(config)
        head.load_tensors(tensors)
        return head

    @classmethod
    def from_checked(cls, checked: HeadDirectory) -> "ActingHead":
        """The head of a directory ``vla_steer.hub.validate_directory`` has checked (its learning curve carried)."""
        head = cls.from_state(checked.config, checked.tensors)
        if LEARNING_CURVE_NAME in checked.files:
            head.extra_files[LEARNING_CURVE_NAME] = checked.path / LEARNING_CURVE_NAME
        return head

    @classmethod
    def from_dir(cls, directory: str | Path, limits: Limits = DEFAULT_LIMITS) -> "ActingHead":
        """Build from a directory holding ``head_config.json`` and ``head.safetensors`` (a shared head directory or
        the trainer's ``head/``), through the format's reader ``vla_steer.hub.read_head``: everything is checked
        before tensors are read (the config's size and schema, the safetensors header, each tensor's name and shape
        against the modules the config describes, on the meta device)."""
        head = cls.from_state(*read_head(directory, limits))
        curve = Path(directory) / LEARNING_CURVE_NAME
        if curve.is_file():  # carried along when the head is saved again (size and type checked when copied)
            head.extra_files[LEARNING_CURVE_NAME] = curve
        return head

    @classmethod
    def from_run(cls, run_dir: str | Path) -> "ActingHead":
        """The head of a finished training run (``<output_dir>/head``), with its recipe, metrics and learning curve
        attached, ready for :meth:`save_pretrained` / ``SteeredPolicy.from_base``."""
        run_dir = Path(run_dir)
        if not (run_dir / "head" / HEAD_CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{run_dir} is not a finished training run: {run_dir / 'head' / HEAD_CONFIG_NAME} is missing")
        head = cls.from_dir(run_dir / "head")
        head.training_record, head.extra_files = training_record(run_dir)
        return head

    @classmethod
    def from_pretrained(cls, repo_id_or_path: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None,
                        token: str | bool | None = None, local_files_only: bool = False, force_download: bool = False,
                        limits: Limits = DEFAULT_LIMITS) -> "ActingHead":
        """A shared head from a local directory or a Hub repo id (at ``revision``; only the head's two files are
        downloaded). No base is loaded: see ``vla_steer.lerobot_policy.load_steered`` /
        ``SteeredPolicy.from_pretrained``."""
        directory = resolve_repo(repo_id_or_path, revision=revision, patterns=[HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME],
                                 cache_dir=cache_dir, token=token, local_files_only=local_files_only,
                                 force_download=force_download)
        return cls.from_dir(directory, limits)

    def save(self, directory: str | Path) -> Path:
        """Write the two files with the config as it is (the trainer's format 0 if the head came from a run)."""
        return write_head(directory, self.head_modules(), self.raw_config, extra_files=self.extra_files)

    def shared_config(self, base: Any = None, *, base_model_name_or_path: str | None = None, revision: str | None = None,
                      adapter_kwargs: dict | None = None, allow_base_mismatch: bool = False, **hub: Any) -> dict:
        """The format-1 ``head_config.json`` of this head on ``base`` (checked: shapes always, the fingerprint unless
        ``allow_base_mismatch``). Without ``base`` the head must already describe its base (format 1)."""
        if base is None:
            if self.format_version < 1:
                raise ValueError("this head (format 0: a training run's head/) does not say which base it was trained "
                                 "on; pass base= (the base's adapter or policy, or its path or repo id)")
            config = dict(self.raw_config)
            if base_model_name_or_path is not None:
                config["base_model_name_or_path"] = str(base_model_name_or_path)
            if revision is not None:
                config["revision"] = revision
            return shared_head_config(self.raw_config, {k: config[k] for k in (
                "adapter", "features", "base_model_name_or_path", "revision", "base_library", "base_library_version",
                "base_policy_type", "base_fingerprint")}, self.training_record)
        name = base_model_name_or_path or (str(base) if isinstance(base, (str, Path)) else self.base_name)
        if not name:
            raise ValueError("pass base_model_name_or_path=: where users get the base (a Hub repo id, or a path)")
        if adapter_kwargs is None and self.format_version:
            adapter_kwargs = self.raw_config["features"]["adapter_kwargs"]  # as in training
        library = self.raw_config.get("base_library") or library_for_family(self.raw_config.get("adapter"))
        adapter = load_base_adapter(base, library=library, policy_type=self.raw_config.get("base_policy_type"),
                                    revision=revision, adapter_kwargs=adapter_kwargs, **hub)
        self.check_base(adapter, adapter_kwargs if self.format_version else None, allow_base_mismatch)
        return shared_head_config(self.raw_config, base_record(adapter, base_model_name_or_path=name, revision=revision,
                                                               adapter_kwargs=adapter_kwargs), self.training_record)

    def save_pretrained(self, save_directory: str | Path, *, base=None, base_model_name_or_path: str | None = None,
                        revision: str | None = None, adapter_kwargs: dict | None = None, model_card: bool = False,
                        card_kwargs: dict | None = None, allow_base_mismatch: bool = False) -> Path:
        """Write a shared head directory (format 1): ``head_config.json``, ``head.safetensors`` (+ ``README.md``
        with ``model_card=True``, + ``learning_curve.png`` when the head came from a run).

        ``base``: the base's adapter (or the base policy / its path or repo id) to fingerprint; required unless
        this head already describes its base (format 1). ``base_model_name_or_path`` / ``revision``: what to
        record as the base's location (default: ``base`` when it is a path or id). The directory is written
        under a temporary name and renamed into place."""
        config = self.shared_config(base, base_model_name_or_path=base_model_name_or_path, revision=revision,
                                    adapter_kwargs=adapter_kwargs, allow_base_mismatch=allow_base_mismatch)

        def write(directory: Path) -> None:
            write_head(directory, self.head_modules(), config, extra_files=self.extra_files, atomic=False)
            if model_card:
                write_model_card(directory, config, num_parameters=self.num_parameters, card_kwargs=card_kwargs)

        return write_directory(save_directory, write)

    def push_to_hub(self, repo_id: str, *, commit_message: str | None = None, private: bool | None = None,
                    token: str | None = None, branch: str | None = None, create_pr: bool | None = None,
                    card_kwargs: dict | None = None, **save_kwargs) -> Any:
        """Save (as :meth:`save_pretrained`, model card included) to a temporary directory and upload it in one
        commit. Returns huggingface_hub's ``CommitInfo``."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            directory = self.save_pretrained(Path(tmp) / "head", card_kwargs={"repo_id": repo_id, **(card_kwargs or {})},
                                             model_card=True, **save_kwargs)
            return push_directory(directory, repo_id, commit_message=commit_message, private=private, token=token,
                                  branch=branch, create_pr=create_pr)
