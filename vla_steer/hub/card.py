"""The model card (``README.md``) of a shared head, rendered from its ``head_config.json``.

The template is ``hub/MODEL_CARD_TEMPLATE.md`` (a Jinja template, rendered with ``huggingface_hub.ModelCard``;
``vla_steer/hub/model_card_template.md`` links to it). Its YAML front matter carries ``library_name``,
``base_model`` (when the base is a Hub repo id), ``tags``, ``datasets`` and ``metrics``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vla_steer.adapters.base import LatentLayout
from vla_steer.hub.fingerprint import base_tag
from vla_steer.hub.schema import validate_head_config
from vla_steer.hub.format import (FORMAT_VERSION, HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME, LEARNING_CURVE_NAME,
                                  MODEL_CARD_NAME, POLICY_CONFIG_NAME, PROCESSOR_CONFIG_NAMES, is_hub_repo_id)

TEMPLATE_PATH = Path(__file__).with_name("model_card_template.md")
LIBRARY_NAME = "vla_steer"
ALGORITHM_TITLES = {"lpds": "LP-DS, Lagrangian perturbation diffusion steering (Simsir & Oguz, ICML 2026)",
                    "dsrl_sac": "DSRL-SAC, SAC in the noise space (Wagenmaker et al., 2025)",
                    "dsrl_na": "DSRL-NA, noise-aliased DSRL (Wagenmaker et al., 2025)"}
METRIC_ORDER = ("success_rate", "return_mean", "return_std", "action_entropy", "episode_length", "episodes")
HEADLINE_METRICS = ("success_rate", "return_mean", "action_entropy")  # listed in the front matter
FILE_DESCRIPTIONS = {
    HEAD_CONFIG_NAME: "the head: algorithm, architecture, shapes, the base it was trained on, training record",
    HEAD_WEIGHTS_NAME: "the head's tensors: the acting network, and the latent critic Q^W(s, z) when shipped",
    POLICY_CONFIG_NAME: "LeRobot config of the `steered` policy (base type, path, revision, adapter options)",
    MODEL_CARD_NAME: "this card",
    LEARNING_CURVE_NAME: "evaluation success, return and action entropy during training",
}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else str(value)


def render_model_card(config: dict, files: list[str], *, repo_id: str | None = None, title: str | None = None,
                      datasets: list[str] | None = None, tags: list[str] | None = None, license: str | None = None,
                      num_parameters: int | None = None) -> str:
    """The card text for a format-1 ``head_config.json`` dict and the files its directory holds."""
    from huggingface_hub import ModelCard, ModelCardData

    training = config.get("training") or {}
    metrics = training.get("metrics") or {}
    base_metrics, steered_metrics = metrics.get("base") or {}, metrics.get("steered") or {}
    names = [m for m in METRIC_ORDER if m in base_metrics or m in steered_metrics]
    names += sorted(m for m in {**base_metrics, **steered_metrics} if m not in names)
    metric_rows = [(m, _fmt(base_metrics.get(m)), _fmt(steered_metrics.get(m))) for m in names]
    training_rows = [(label, _fmt(training[key])) for key, label in (
        ("env", "environment"), ("method", "method"), ("env_steps", "env steps"), ("updates", "gradient updates"),
        ("seed", "seed"), ("wall_time_s", "wall time (s)"), ("num_processes", "processes"), ("recipe", "recipe"))
        if key in training]
    hyper = config.get("hyperparameters") or {}
    base_name = config["base_model_name_or_path"]
    hub_base = is_hub_repo_id(base_name)
    algorithm = config["algorithm"]
    fingerprint = config["base_fingerprint"]
    lerobot = config["base_library"] == "lerobot" and POLICY_CONFIG_NAME in files
    all_tags = ["robotics", LIBRARY_NAME, "noise-steering", "reinforcement-learning", algorithm, base_tag(fingerprint),
                config["base_policy_type"], *(["lerobot"] if config["base_library"] == "lerobot" else []), *(tags or [])]
    datasets = list(datasets or training.get("datasets") or [])
    card_data = ModelCardData(
        library_name=LIBRARY_NAME, base_model=base_name if hub_base else None, tags=list(dict.fromkeys(all_tags)),
        datasets=datasets or None, metrics=[m for m in HEADLINE_METRICS if m in steered_metrics] or None,
        pipeline_tag="robotics", license=license)
    describe = {**FILE_DESCRIPTIONS, **{name: "the base's LeRobot processor (normalisation etc.), copied from the base"
                                        for name in PROCESSOR_CONFIG_NAMES}}
    file_rows = [(name, describe.get(name, "state of a processor step (normalisation statistics)")) for name in sorted(files)]
    revision = config.get("revision")
    card = ModelCard.from_template(
        card_data, template_path=str(TEMPLATE_PATH),
        title=title or f"{algorithm} steering head for {base_name if hub_base else Path(base_name).name}",
        base_link=f"[{base_name}](https://huggingface.co/{base_name})" if hub_base else f"`{base_name}`",
        base_hint="" if hub_base else "<path to the base>",
        num_parameters=f"{num_parameters:,}" if num_parameters is not None else "a few",
        algorithm_title=ALGORITHM_TITLES.get(algorithm, algorithm), format_version=config.get("format_version", FORMAT_VERSION),
        repo_id=repo_id or "<repo_id>", lerobot=lerobot,
        base_model_name_or_path=base_name, base_revision=revision or "not pinned",
        base_policy_type=config["base_policy_type"], base_library=config["base_library"],
        base_library_version=config["base_library_version"], fingerprint_method=fingerprint["method"],
        fingerprint_weights=fingerprint["weights"][:16], fingerprint_config=fingerprint["config"][:16],
        fingerprint_tensors=fingerprint["num_tensors"], fingerprint_parameters=f"{fingerprint['num_parameters']:,}",
        noise_shape=config["noise_shape"], latent_shape=config["latent_shape"],
        latent_layout=LatentLayout.from_head(validate_head_config(config)["head"], config["noise_shape"]).describe(),
        adapter=config["adapter"], feature_dim=config["feature_dim"],
        pooling=config["features"]["pooling"] or "n/a", adapter_kwargs=config["features"]["adapter_kwargs"],
        training_rows=training_rows, metric_rows=metric_rows, learning_curve=LEARNING_CURVE_NAME in files,
        hyperparameter_rows=[(k, _fmt(v)) for k, v in sorted(hyper.items())], files=file_rows,
    )
    return str(card)
