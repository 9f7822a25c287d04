"""Reading and writing a head's two files, ``head_config.json`` and ``head.safetensors``: the one writer of the
format (:func:`write_head`) and the one reader (:func:`read_head`).

Everyone who writes a head goes through :func:`write_head`: a training run's exporter (format 0, ``<run>/head/``),
``ActingHead.save / save_pretrained``, ``SteeredPolicy.save_pretrained`` and ``vla-steer push``. It refuses to
write what :func:`read_head` would refuse to read (schema, tensor names and shapes, dtypes).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vla_steer.files import write_atomically
from vla_steer.hub.format import (DEFAULT_LIMITS, HEAD_CONFIG_NAME, HEAD_DTYPES, HEAD_WEIGHTS_NAME, LEARNING_CURVE_NAME,
                                  HeadFormatError, Limits, dump_json, is_format_file, read_json,
                                  read_safetensors_header)
from vla_steer.hub.schema import canonical_head_config, expected_tensor_shapes, mismatch_message, tensor_problems

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}
EXTRA_FILES = (LEARNING_CURVE_NAME,)  # files a head may carry along besides its two own


def write_directory(final_dir: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_dir)`` on a fresh temporary directory next to ``final_dir``, then rename it into place:
    a crash leaves the previous directory (or none), never half of one. An existing ``final_dir`` is replaced only
    if it holds nothing but head-format files. Returns ``final_dir``, resolved."""
    final_dir = Path(final_dir).expanduser().resolve()
    if final_dir.exists():
        if not final_dir.is_dir():
            raise FileExistsError(f"{final_dir} exists and is not a directory")
        foreign = sorted(p.name for p in final_dir.iterdir() if not is_format_file(p.name))
        if foreign:
            raise FileExistsError(f"refusing to replace {final_dir}: it holds files that are not part of a head "
                                  f"directory: {foreign[:10]}")
    return write_atomically(final_dir, write)


def head_tensors(modules: Mapping[str, nn.Module | Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``{"<module>.<param>": tensor}`` (detached, on the CPU, contiguous) from modules or state dicts by name."""
    tensors = {}
    for name, module in modules.items():
        state = module.state_dict() if isinstance(module, nn.Module) else module
        for key, value in state.items():
            tensors[f"{name}.{key}"] = value.detach().cpu().contiguous()
    return tensors


def check_head_tensors(config: dict[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
    """Refuse tensors that do not match the modules ``config`` describes (names, shapes) or the format's dtypes."""
    problems = tensor_problems(expected_tensor_shapes(config), {k: tuple(v.shape) for k, v in tensors.items()})
    if problems:
        raise HeadFormatError(mismatch_message(config, problems))
    wrong = sorted(k for k, v in tensors.items() if SAFETENSORS_DTYPES.get(v.dtype) not in HEAD_DTYPES)
    if wrong:
        raise HeadFormatError(f"head tensors must be floating point ({', '.join(HEAD_DTYPES)}); not so: {wrong}")
    check_finite_tensors(tensors)


MAX_ABS_WEIGHT = 1e6  # far beyond any trained head's weights; larger ones overflow the activations to inf / NaN


def check_finite_tensors(tensors: Mapping[str, torch.Tensor]) -> None:
    """Refuse NaN / inf weights, and weights beyond ``MAX_ABS_WEIGHT``: a head holding them would act NaN."""
    bad = sorted(k for k, v in tensors.items() if not (torch.isfinite(v).all() and v.abs().max() <= MAX_ABS_WEIGHT))
    if bad:
        raise HeadFormatError(f"head tensors hold NaN, inf or values beyond {MAX_ABS_WEIGHT:g}: {bad[:10]}"
                              f"{' ...' if len(bad) > 10 else ''}; such a head would act NaN. Retrain, or export an "
                              "earlier checkpoint")


def copy_learning_curve(source: str | Path, directory: Path, limits: Limits = DEFAULT_LIMITS) -> None:
    source = Path(source)
    if source.stat().st_size > limits.max_image_bytes or source.read_bytes()[:8] != PNG_MAGIC:
        raise HeadFormatError(f"{source} is not a PNG image within {limits.max_image_bytes} bytes")
    shutil.copyfile(source, directory / LEARNING_CURVE_NAME)


def write_head(directory: str | Path, modules: Mapping[str, nn.Module | Mapping[str, torch.Tensor]],
               head_config: dict[str, Any], *, extra_files: Mapping[str, str | Path] | None = None,
               atomic: bool = True) -> Path:
    """Write a head: ``head_config.json`` (``head_config``, as strict JSON) and ``head.safetensors`` (the tensors of
    ``modules``, keyed ``"<module name>.<parameter>"``), after checking them against each other.

    ``modules``: ``{name: nn.Module or its state dict}``: the acting module under the name its algorithm's acting
    rule gives (``"delta"`` for lpds, ``"actor"`` for dsrl_sac / dsrl_na: ``SteeringAlgorithm.head_modules()``)
    and, when ``head_config["critic"] == "latent"``, the latent critic Q^W(s, z) as ``"critic"``.
    ``head_config``: a format-0 or format-1 ``head_config.json`` dict (``hub/FORMAT.md``; format 0 needs
    ``algorithm``, ``head``, ``noise_shape``, ``latent_shape``, ``feature_dim``, optionally ``adapter``, ``env``,
    ``base_fingerprint``, ``critic``). ``extra_files``: ``{"learning_curve.png": path}`` to carry along (a PNG;
    missing sources are skipped).

    ``atomic=True``: ``directory`` is written under a temporary name and renamed into place, replacing a previous
    head there (never a directory holding other files). ``atomic=False`` writes into ``directory`` as it is, for
    callers that write a larger directory atomically themselves (:func:`write_directory`). Returns the directory.
    """
    config = dict(head_config)
    canonical_head_config(config)  # the schema: raises HeadFormatError naming the field
    tensors = head_tensors(modules)
    check_head_tensors(config, tensors)
    unknown = sorted(set(extra_files or {}) - set(EXTRA_FILES))
    if unknown:
        raise HeadFormatError(f"a head directory carries no {unknown}; extra files allowed: {list(EXTRA_FILES)}")

    def write(target: Path) -> None:
        from safetensors.torch import save_file

        (target / HEAD_CONFIG_NAME).write_text(dump_json(config))
        save_file(tensors, str(target / HEAD_WEIGHTS_NAME), metadata={"format": "pt"})
        for name, source in (extra_files or {}).items():
            if Path(source).is_file() and not (target / name).exists():
                copy_learning_curve(source, target)

    if atomic:
        return write_directory(directory, write)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write(directory)
    return directory


def read_head(directory: str | Path, limits: Limits = DEFAULT_LIMITS) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(config, tensors)`` of the head in ``directory`` (a shared head directory or a run's ``head/``), every
    check done before the tensors are read: the config's size and schema, the safetensors header (size, dtypes,
    byte ranges, truncation) and each tensor's name and shape against the modules the config describes (built on
    the meta device: no memory is allocated for a hostile config). ``config`` is canonical (every ``head`` field,
    shapes as lists)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    config = canonical_head_config(read_json(directory / HEAD_CONFIG_NAME, HEAD_CONFIG_NAME, limits.max_json_bytes))
    specs = read_safetensors_header(directory / HEAD_WEIGHTS_NAME, HEAD_WEIGHTS_NAME, max_bytes=limits.max_head_bytes,
                                    max_tensors=limits.max_head_tensors, max_header_bytes=limits.max_header_bytes,
                                    dtypes=HEAD_DTYPES)
    problems = tensor_problems(expected_tensor_shapes(config), {k: shape for k, (_, shape) in specs.items()})
    if problems:
        raise HeadFormatError(mismatch_message(config, problems))
    try:
        tensors = load_file(str(directory / HEAD_WEIGHTS_NAME))
    except SafetensorError as exc:
        raise HeadFormatError(f"{HEAD_WEIGHTS_NAME} could not be read: {exc}") from None
    try:
        check_finite_tensors(tensors)
    except HeadFormatError as exc:
        raise HeadFormatError(f"{directory / HEAD_WEIGHTS_NAME}: {exc}") from None
    return config, tensors
