"""The shared head format: file names, version, size limits, and the checks that run before anything is parsed.

Nothing here imports torch or LeRobot: these checks read bytes, JSON and safetensors headers only, so a hostile
file is refused before any library gets to interpret it. The format itself is specified in ``hub/FORMAT.md``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1

HEAD_CONFIG_NAME = "head_config.json"
HEAD_WEIGHTS_NAME = "head.safetensors"
POLICY_CONFIG_NAME = "config.json"  # LeRobot's config of the ``steered`` policy (LeRobot bases only)
MODEL_CARD_NAME = "README.md"
LEARNING_CURVE_NAME = "learning_curve.png"
PROCESSOR_CONFIG_NAMES = ("policy_preprocessor.json", "policy_postprocessor.json")
PROCESSOR_STATE_RE = re.compile(r"^policy_(pre|post)processor_step_\d+(_[A-Za-z0-9_-]+)?\.safetensors$")

# What from_pretrained downloads (nothing else is fetched), and what `vla-steer pull` adds for people to read.
PROCESSOR_PATTERNS = [*PROCESSOR_CONFIG_NAMES, "policy_preprocessor_step_*.safetensors",
                      "policy_postprocessor_step_*.safetensors"]
LOAD_PATTERNS = [HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME, POLICY_CONFIG_NAME, *PROCESSOR_PATTERNS]
PULL_PATTERNS = [*LOAD_PATTERNS, MODEL_CARD_NAME, LEARNING_CURVE_NAME]

# Keys that, in the configs of other libraries, make a loader import or run code. They have no meaning in this
# format; a file carrying one is refused with a message saying why rather than silently ignored.
CODE_REFERENCE_KEYS = {
    "auto_map": "transformers remote code (auto_map)",
    "trust_remote_code": "a request to run remote code",
    "_target_": "a Hydra/OmegaConf instantiation target",
    "class": "a class path to import (LeRobot processor steps)",
    "__class__": "a class path to import",
    "_class_name": "a class name to instantiate (diffusers)",
    "py/object": "a jsonpickle object",
    "py/reduce": "a jsonpickle reduction",
    "__reduce__": "a pickle reduction",
    "custom_pipeline": "custom pipeline code",
}

SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
                           "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
HEAD_DTYPES = ("F32", "F16", "BF16", "F64")
PROCESSOR_DTYPES = ("F64", "F32", "F16", "I64", "I32", "I16", "I8", "U8", "BOOL")  # statistics and counts


class HeadFormatError(ValueError):
    """A head file or directory does not match the format (unknown fields, wrong tensors, hostile content)."""


class BaseMismatchError(HeadFormatError):
    """A head was trained on another base policy than the one it is being attached to."""


@dataclass(frozen=True)
class Limits:
    """Sizes checked before a file is parsed. Heads are small (well under 1% of their base); these leave room."""

    max_json_bytes: int = 1 << 20  # any JSON file (configs are a few KiB)
    max_head_bytes: int = 1 << 30  # head.safetensors
    max_head_tensors: int = 512
    max_processor_state_bytes: int = 256 << 20  # each policy_*processor_step_*.safetensors
    max_header_bytes: int = 1 << 20  # the JSON header inside a safetensors file
    max_card_bytes: int = 1 << 20  # README.md
    max_image_bytes: int = 16 << 20  # learning_curve.png


DEFAULT_LIMITS = Limits()


# -------------------------------------------------------------------------------------------------------------
# JSON
def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    keys = [key for key, _ in pairs]
    duplicated = sorted({key for key in keys if keys.count(key) > 1})
    if duplicated:
        raise HeadFormatError(f"duplicate key(s) {duplicated}")
    return dict(pairs)


def _no_constants(name: str) -> Any:
    raise HeadFormatError(f"non-standard JSON constant {name} (NaN / Infinity are not JSON)")


MAX_JSON_DEPTH = 32  # the format's files nest 4 deep, LeRobot's configs and processor files under 10


def _nesting_depth(tree: Any) -> int:
    """How deeply ``tree`` nests lists and objects, counted without recursion (a hostile file cannot exhaust the
    stack here, nor in any recursive walk that runs after this check)."""
    depth, level = 0, [tree]
    while level:
        containers = [node for node in level if isinstance(node, (dict, list))]
        if not containers:
            break
        depth += 1
        level = [child for node in containers for child in (node.values() if isinstance(node, dict) else node)]
    return depth


def parse_json(data: bytes, what: str) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN / Infinity, nesting at most ``MAX_JSON_DEPTH`` deep."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise HeadFormatError(f"{what} is not UTF-8 text, so not a JSON file") from None
    try:
        tree = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except HeadFormatError as exc:
        raise HeadFormatError(f"{what}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise HeadFormatError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:  # deeper than Python's parser goes: certainly deeper than the limit
        tree, too_deep = None, True
    else:
        too_deep = _nesting_depth(tree) > MAX_JSON_DEPTH
    if too_deep:
        raise HeadFormatError(f"{what} nests lists / objects more than {MAX_JSON_DEPTH} deep; no file of the format "
                              "does: it is not a head's file")
    return tree


def _check_size(path: Path, what: str, max_bytes: int, limit_note: str = "") -> int:
    """The size of the file at ``path``, refused before anything reads it if missing or over ``max_bytes``."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} is missing ({path})")
    size = path.stat().st_size
    if size > max_bytes:
        raise HeadFormatError(f"{what} is {size} bytes, over the {max_bytes}-byte limit{limit_note}")
    return size


def read_json(path: str | Path, what: str | None = None, max_bytes: int = DEFAULT_LIMITS.max_json_bytes) -> Any:
    """A JSON file, refused before reading if larger than ``max_bytes``; code-referencing keys are refused."""
    path = Path(path)
    what = what or path.name
    _check_size(path, what, max_bytes, " for JSON files")
    tree = parse_json(path.read_bytes(), what)
    reject_code_references(tree, what)
    return tree


def reject_code_references(tree: Any, what: str, path: str = "") -> None:
    """Refuse any key that other loaders treat as 'import / run this' (``auto_map``, ``_target_`` ...)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            where = f"{path}.{key}" if path else str(key)
            if key in CODE_REFERENCE_KEYS:
                raise HeadFormatError(
                    f"{what}: field {where!r} is {CODE_REFERENCE_KEYS[key]}. vla_steer never imports or runs code "
                    "named by a file (there is no trust_remote_code); remove the field")
            reject_code_references(value, what, where)
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            reject_code_references(value, what, f"{path}[{i}]")


def to_json_safe(tree: Any) -> Any:
    """Non-finite floats become ``None`` (standard JSON has no NaN), tuples become lists."""
    if isinstance(tree, dict):
        return {str(k): to_json_safe(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [to_json_safe(v) for v in tree]
    if isinstance(tree, float) and not math.isfinite(tree):
        return None
    return tree


def dump_json(tree: Any) -> str:
    return json.dumps(to_json_safe(tree), indent=2, allow_nan=False) + "\n"


# -------------------------------------------------------------------------------------------------------------
# safetensors
def _sniff(prefix: bytes) -> str:
    if len(prefix) >= 2 and prefix[0] == 0x80 and 2 <= prefix[1] <= 5:
        return " It starts like a Python pickle (pickle.dump / old torch.save); pickles can run code and are refused."
    if prefix[:4] == b"PK\x03\x04":
        return " It is a zip archive (torch.save's format, which holds a pickle); it is refused."
    return ""


def read_safetensors_header(path: str | Path, what: str | None = None, *, max_bytes: int = DEFAULT_LIMITS.max_head_bytes,
                            max_tensors: int = DEFAULT_LIMITS.max_head_tensors,
                            max_header_bytes: int = DEFAULT_LIMITS.max_header_bytes,
                            dtypes: tuple[str, ...] | None = None) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Check a safetensors file from its header alone: ``{name: (dtype, shape)}``.

    Refuses, with a message naming the problem: files over ``max_bytes``, anything that is not safetensors (a
    pickle or zip renamed ``.safetensors`` is named as such), a header over ``max_header_bytes`` or with more than
    ``max_tensors`` entries, dtypes outside ``dtypes``, byte ranges that do not match dtype x shape, overlap or
    leave gaps, and truncated files (the header promises more bytes than the file holds).
    """
    path = Path(path)
    what = what or path.name
    size = _check_size(path, what, max_bytes)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise HeadFormatError(f"{what} is truncated: {size} bytes, less than a safetensors header length field"
                                  + _sniff(prefix))
        header_len = int.from_bytes(prefix, "little")
        if header_len > max_header_bytes or header_len < 2:
            raise HeadFormatError(f"{what} is not a safetensors file: its header length field reads {header_len} "
                                  f"(allowed 2..{max_header_bytes})." + _sniff(prefix))
        if 8 + header_len > size:
            raise HeadFormatError(f"{what} is truncated: its header needs {header_len} bytes, the file has "
                                  f"{size - 8} after the length field" + _sniff(prefix))
        header = parse_json(f.read(header_len), f"{what} (safetensors header)")
    if not isinstance(header, dict):
        raise HeadFormatError(f"{what}: the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise HeadFormatError(f"{what}: __metadata__ must map strings to strings")
    if len(header) > max_tensors:
        raise HeadFormatError(f"{what} holds {len(header)} tensors, over the limit of {max_tensors}")
    specs, ranges = {}, []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise HeadFormatError(f"{what}: tensor {name!r} must have exactly dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in SAFETENSORS_DTYPE_BYTES or (dtypes is not None and dtype not in dtypes):
            raise HeadFormatError(f"{what}: tensor {name!r} has dtype {dtype!r}; allowed: {list(dtypes or SAFETENSORS_DTYPE_BYTES)}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise HeadFormatError(f"{what}: tensor {name!r} has an invalid shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise HeadFormatError(f"{what}: tensor {name!r} has invalid data_offsets {offsets!r}")
        nbytes = math.prod(shape) * SAFETENSORS_DTYPE_BYTES[dtype]
        if offsets[1] - offsets[0] != nbytes:
            raise HeadFormatError(f"{what}: tensor {name!r} ({dtype} {shape}) needs {nbytes} bytes, its offsets span "
                                  f"{offsets[1] - offsets[0]}")
        specs[name] = (dtype, tuple(shape))
        ranges.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(ranges):
        if begin != end:
            raise HeadFormatError(f"{what}: tensor {name!r} starts at byte {begin}, expected {end} (gap or overlap)")
        end = stop
    data_bytes = size - 8 - header_len
    if end > data_bytes:
        raise HeadFormatError(f"{what} is truncated: its tensors need {end} bytes of data, the file holds {data_bytes}")
    if end < data_bytes:
        raise HeadFormatError(f"{what} has {data_bytes - end} bytes after its last tensor (not a valid safetensors file)")
    return specs


# -------------------------------------------------------------------------------------------------------------
# LeRobot files carried by a steered directory
STEP_KEYS = {"registry_name", "config", "state_file"}


def check_processor_config(path: str | Path, limits: Limits = DEFAULT_LIMITS) -> dict:
    """A LeRobot ``policy_*processor.json``: every step named by LeRobot's registry, none by a class path.

    LeRobot imports the module named by a step's ``class`` field; here only ``registry_name`` (a lookup among
    classes LeRobot already imported) is accepted. ``state_file`` must be a plain file name in the same directory
    and a valid safetensors file within the size limits.
    """
    path = Path(path)
    what = path.name
    config = read_json(path, what, limits.max_json_bytes)  # refuses "class" keys with a clear message
    if not isinstance(config, dict) or not isinstance(config.get("steps"), list) or set(config) - {"name", "steps"}:
        raise HeadFormatError(f"{what} must be an object with 'name' and a list of 'steps' (a LeRobot processor file)")
    for i, step in enumerate(config["steps"]):
        if not isinstance(step, dict) or set(step) - STEP_KEYS or not isinstance(step.get("registry_name"), str):
            raise HeadFormatError(f"{what}: step {i} must have a string registry_name and only the keys {sorted(STEP_KEYS)}")
        if "config" in step and not isinstance(step["config"], dict):
            raise HeadFormatError(f"{what}: step {i} config must be an object")
        if "state_file" in step:
            state = step["state_file"]
            if not isinstance(state, str) or not PROCESSOR_STATE_RE.match(state):
                raise HeadFormatError(f"{what}: step {i} state_file {state!r} is not a processor state file name "
                                      "(policy_<pre|post>processor_step_<i>_<name>.safetensors, no directories)")
            specs = read_safetensors_header(path.parent / state, state, max_bytes=limits.max_processor_state_bytes,
                                            max_tensors=limits.max_head_tensors, max_header_bytes=limits.max_header_bytes,
                                            dtypes=PROCESSOR_DTYPES)
            _check_processor_stats(path.parent / state, specs, (step.get("config") or {}).get("features"))
    return config


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether a tensor of ``shape`` broadcasts against ``target`` without changing ``target``'s shape."""
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(reversed(shape), reversed(target)))


def _check_processor_stats(path: Path, specs: dict[str, tuple[str, tuple[int, ...]]], features: Any) -> None:
    """A processor state file's statistics (``<feature>.<stat>``, LeRobot's normaliser): finite, and shaped to
    broadcast against the feature the step's config declares; NaN stats would make every action NaN."""
    from safetensors.numpy import load_file

    features = features if isinstance(features, dict) else {}
    for name, (_, shape) in specs.items():
        feature = features.get(name.rsplit(".", 1)[0])
        declared = feature.get("shape") if isinstance(feature, dict) else None
        if isinstance(declared, list) and all(isinstance(d, int) for d in declared) \
                and not _broadcasts_to(shape, tuple(declared)):
            raise HeadFormatError(f"{path.name}: statistic {name!r} has shape {list(shape)}, which does not fit the "
                                  f"feature's shape {declared}; the processor files belong to another policy: copy "
                                  "them from the base again")
    bad = sorted(name for name, array in load_file(str(path)).items()
                 if array.dtype.kind == "f" and not math.isfinite(float(abs(array).max(initial=0.0))))
    if bad:
        raise HeadFormatError(f"{path.name}: statistics {bad[:10]} hold NaN or inf; normalising with them makes every "
                              "action NaN. Copy the processor files from the base again (or recompute its stats)")


def check_policy_config(path: str | Path, supported_base_types, limits: Limits = DEFAULT_LIMITS) -> dict:
    """LeRobot's ``config.json`` of a steered policy: type ``steered`` and a base type an adapter exists for."""
    what = Path(path).name
    config = read_json(path, what, limits.max_json_bytes)
    if not isinstance(config, dict):
        raise HeadFormatError(f"{what} must be a JSON object")
    if config.get("type") != "steered":
        raise HeadFormatError(f"{what} has type {config.get('type')!r}; a steering-head directory holds a 'steered' policy")
    if config.get("base_type") not in supported_base_types:
        raise HeadFormatError(f"{what}: base_type {config.get('base_type')!r} is not one vla_steer can steer; "
                              f"supported: {sorted(supported_base_types)}")
    for key in ("base_path", "base_revision"):
        if config.get(key) is not None and not isinstance(config[key], str):
            raise HeadFormatError(f"{what}: {key} must be a string")
    return config


def is_hub_repo_id(name: str | None) -> bool:
    """Whether ``name`` reads as a Hub repo id (``org/name``) rather than a local path."""
    import os

    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not name or name.startswith(("/", ".", "~")) or "\\" in name or os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def is_format_file(name: str) -> bool:
    """Whether ``name`` is one of the files a head directory may hold."""
    return (name in (HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME, POLICY_CONFIG_NAME, MODEL_CARD_NAME, LEARNING_CURVE_NAME)
            or name in PROCESSOR_CONFIG_NAMES or bool(PROCESSOR_STATE_RE.match(name)))
