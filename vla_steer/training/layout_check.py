"""Does the frozen base still work when its noise comes through a latent layout? Checked before any RL.

Steering can only start from what the base does under the prior latent: a fine-tuned pi0 that succeeds with i.i.d.
noise may never succeed when one noise row is tiled over the chunk (reported on the official DSRL pi0 code), and no
amount of RL in that latent fixes it. :func:`check_layouts` evaluates the base with its own noise and under each
layout with latents drawn from the prior, on the same evaluation start states and prior draws
(:class:`vla_steer.training.evaluator.Evaluator`), and recommends the smallest latent that keeps the base working.
"""

from __future__ import annotations

from typing import Iterable

from vla_steer.adapters.base import LatentLayout
from vla_steer.config import Recipe

#: interpolated layouts tried by default (control rows K), those below the chunk length
DEFAULT_ROWS = (2, 4, 8)
#: a layout keeps the base when it reaches this fraction of the base's success (of its return when the base never
#: succeeds). A heuristic with a few dozen episodes: raise --episodes for a firmer call
KEEP_FRACTION = 0.8


def candidate_layouts(noise_shape: tuple[int, int], action_dim: int, rows: Iterable[int] = DEFAULT_ROWS) -> list[LatentLayout]:
    """``full``, ``tiled`` and ``interpolated(K)`` for each K below the chunk length; for a base whose noise is wider
    than its actions (pi0 pads to 32), the same again steering only the real action dimensions."""
    chunk, width = noise_shape
    widths = [None] + ([action_dim] if action_dim < width else [])
    layouts = []
    for steered in widths:
        layouts += [LatentLayout("full", noise_shape, steered_dims=steered),
                    LatentLayout("tiled", noise_shape, steered_dims=steered)]
        layouts += [LatentLayout("interpolated", noise_shape, k, steered) for k in sorted(set(rows)) if 1 < k < chunk]
    return layouts


def keeps_base(base: dict, under_layout: dict) -> bool:
    """Whether the base under a layout keeps at least ``KEEP_FRACTION`` of its own success (or, for a base that never
    succeeds, does not lose more than ``1 - KEEP_FRACTION`` of its return's magnitude)."""
    if base["success_rate"] > 0:
        return under_layout["success_rate"] >= KEEP_FRACTION * base["success_rate"]
    return under_layout["return_mean"] >= base["return_mean"] - (1 - KEEP_FRACTION) * abs(base["return_mean"])


def check_layouts(recipe: Recipe, base, layouts: list[LatentLayout], show_progress: bool = True) -> dict:
    """The base with its own noise, then under each layout with prior latents: ``{"base": metrics, "layouts": [{"layout",
    "latent_dim", "keeps_base", **metrics}], "recommended": name}``. Every evaluation uses ``train.eval_seed``."""
    from tqdm.auto import tqdm

    from vla_steer.training.evaluator import Evaluator

    def evaluate(layout: LatentLayout, mode: str) -> dict:
        return Evaluator(recipe, base, layout, seed=recipe.train.eval_seed).evaluate(mode)

    with tqdm(total=len(layouts) + 1, desc="check-layout", disable=not show_progress) as progress:
        base_metrics = evaluate(layouts[0], "base")
        progress.update()
        rows = []
        for layout in layouts:
            metrics = evaluate(layout, "prior_latent")
            rows.append({"layout": layout.describe(), "latent_dim": layout.latent_dim,
                         "keeps_base": keeps_base(base_metrics, metrics), **metrics})
            progress.update()
    return {"base": base_metrics, "layouts": rows, "recommended": recommend(rows)}


def recommend(rows: list[dict]) -> str | None:
    """The smallest latent among layouts that keep the base (higher success, then return, breaks ties); ``None``
    when none does."""
    keepers = [r for r in rows if r["keeps_base"]]
    if not keepers:
        return None
    return min(keepers, key=lambda r: (r["latent_dim"], -r["success_rate"], -r["return_mean"]))["layout"]


def format_report(report: dict) -> str:
    """The report as a table, one row per layout under the base's own, and the recommendation."""
    lines = [f"  {'noise':34s} {'latent':>7s} {'success':>8s} {'return':>9s} {'entropy':>8s} {'drift':>7s}  keeps base"]
    b = report["base"]
    lines.append(f"  {'base (its own i.i.d. noise)':34s} {'-':>7s} {b['success_rate']:8.2f} {b['return_mean']:9.1f} "
                 f"{b['action_entropy']:8.2f} {'-':>7s}")
    for r in report["layouts"]:
        lines.append(f"  {r['layout']:34s} {r['latent_dim']:7d} {r['success_rate']:8.2f} {r['return_mean']:9.1f} "
                     f"{r['action_entropy']:8.2f} {r.get('action_drift', float('nan')):7.3f}  "
                     f"{'yes' if r['keeps_base'] else 'NO'}")
    episodes = b["episodes"]
    lines.append(f"  ({episodes} episodes each on the same start states; drift: energy distance of executed actions "
                 "from the base's)")
    if report["recommended"]:
        lines.append(f"recommended: {report['recommended']} (the smallest latent that keeps the base)")
    else:
        lines.append("no layout keeps the base on these episodes: check the base itself, or evaluate more episodes")
    return "\n".join(lines)


def layout_warning(layout: LatentLayout, base_metrics: dict, under_layout: dict) -> str | None:
    """The loud warning ``vla-steer train`` prints when the base collapses under the recipe's layout."""
    if keeps_base(base_metrics, under_layout):
        return None
    return (f"WARNING: the base collapses under latent layout {layout.describe()!r}: success "
            f"{base_metrics['success_rate']:.2f} -> {under_layout['success_rate']:.2f}, return "
            f"{base_metrics['return_mean']:.1f} -> {under_layout['return_mean']:.1f} with prior latents. RL starts "
            "from this, not from the base: run `vla-steer check-layout` on the recipe and pick a layout that keeps it")
