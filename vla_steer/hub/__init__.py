"""Share steering heads on the Hugging Face Hub: the head format, save / load / push, model cards, safe loading.

The format (``hub/FORMAT.md``): ``head_config.json`` (format version, head type, the base's name, revision, type,
library version and fingerprint, shapes, feature options, algorithm, hyper-parameters, training metrics) +
``head.safetensors`` (head tensors only) + ``README.md`` (model card) + for LeRobot bases LeRobot's ``config.json``
of the ``steered`` policy and the base's processor files, so ``lerobot-eval --policy.path=<dir>`` runs it.

Entry points: ``ActingHead.save_pretrained / from_pretrained / push_to_hub`` and the same on ``SteeredPolicy``
(``vla_steer.lerobot_policy``); :func:`load_steered` (head + the base it names); :func:`export_run` (a training
run -> a head directory); :func:`prepare_upload` / :func:`push_directory`; :func:`pull`; :func:`validate_directory`;
``vla-steer push | pull | info``.

This package's ``__init__`` imports the API lazily: ``vla_steer.lerobot_policy.head`` imports
``vla_steer.hub.format``, and the API imports ``vla_steer.lerobot_policy``.
"""

from vla_steer.hub.fingerprint import base_fingerprint
from vla_steer.hub.format import FORMAT_VERSION, BaseMismatchError, HeadFormatError, Limits

_API = ("HeadDirectory", "SteeredChunkPolicy", "UploadPlan", "describe", "export_run", "load_base_for", "load_steered",
        "prepare_upload", "pull", "push_directory", "resolve_repo", "save_head_dir", "training_record",
        "validate_directory")

__all__ = ["FORMAT_VERSION", "BaseMismatchError", "HeadFormatError", "Limits", "base_fingerprint", "load_head",
           "render_model_card", *_API]


def __getattr__(name: str):
    if name in _API:
        from vla_steer.hub import api

        return getattr(api, name)
    if name == "load_head":
        from vla_steer.lerobot_policy.head import ActingHead

        return ActingHead.from_pretrained
    if name == "render_model_card":
        from vla_steer.hub.card import render_model_card

        return render_model_card
    raise AttributeError(f"module 'vla_steer.hub' has no attribute {name!r}")
