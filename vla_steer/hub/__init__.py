"""The shared head format and its I/O: schema, strict checks, fingerprint, reading / writing, Hub transfers, model card.

The format (``hub/FORMAT.md``): ``head_config.json`` (format version, head type, the base's name, revision, type,
library version and fingerprint, shapes, feature options, algorithm, hyper-parameters, training metrics) +
``head.safetensors`` (head tensors only) + ``README.md`` (model card) + for LeRobot bases LeRobot's ``config.json``
of the ``steered`` policy and the base's processor files, so ``lerobot-eval --policy.path=<dir>`` runs it.

Modules, each importing only those before it (and nothing above this package: ``vla_steer.lerobot_policy`` and
``vla_steer.training`` import this one, never the other way round):

* ``format``: file names, limits, strict JSON, safetensors headers, LeRobot file checks (no torch);
* ``fingerprint``: :func:`base_fingerprint`;
* ``schema``: ``head_config.json`` (:func:`validate_head_config`) and the modules / tensors a config describes;
* ``head_files``: :func:`write_head`, the one writer of a head, and :func:`read_head`, the one reader;
* ``card``: :func:`render_model_card`;
* ``api``: :func:`resolve_repo`, :func:`validate_directory`, :func:`prepare_upload` / :func:`push_directory`,
  :func:`pull`, :func:`describe`, loading the base a head names, the training record of a run.

The acting head and the steered policy are one layer up, in ``vla_steer.lerobot_policy`` (``ActingHead``,
``SteeredPolicy``, ``load_steered``, ``export_run``).
"""

from vla_steer.hub.fingerprint import base_fingerprint
from vla_steer.hub.format import FORMAT_VERSION, BaseMismatchError, HeadFormatError, Limits

_LAZY = {
    "api": ("FoundHead", "HeadDirectory", "UploadPlan", "base_record", "describe", "fingerprint_base", "load_base_adapter",
            "load_base_for", "prepare_upload", "pull", "push_directory", "resolve_repo", "search_heads", "training_record",
            "validate_directory", "write_model_card"),
    "card": ("render_model_card",),
    "head_files": ("read_head", "write_directory", "write_head"),
    "schema": ("HEAD_TYPES", "build_head_modules", "shared_head_config", "validate_head_config"),
}

__all__ = ["FORMAT_VERSION", "BaseMismatchError", "HeadFormatError", "Limits", "base_fingerprint",
           *(name for names in _LAZY.values() for name in names)]


def __getattr__(name: str):
    """The rest of the API, imported on first use (importing ``vla_steer.hub`` loads ``format`` and
    ``fingerprint`` only)."""
    if name in _LAZY["api"]:
        from vla_steer.hub import api as module
    elif name in _LAZY["card"]:
        from vla_steer.hub import card as module
    elif name in _LAZY["head_files"]:
        from vla_steer.hub import head_files as module
    elif name in _LAZY["schema"]:
        from vla_steer.hub import schema as module
    else:
        raise AttributeError(f"module 'vla_steer.hub' has no attribute {name!r}")
    return getattr(module, name)
