"""Learning-curve plots (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def _env_steps_axis(ax) -> None:
    """Label the x axis in env steps with thousands as ``k`` (full numbers collide at 40k+)."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xlabel("env steps")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x else "0"))


def plot_learning_curve(results: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history, base = results.get("history", []), results.get("base") or {}
    steps = [h["env_steps"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    panels = [("success_rate", "success rate"), ("return_mean", "eval return"), ("action_entropy", "action entropy (k-NN, nats)")]
    for ax, (key, label) in zip(axes, panels):
        ax.plot(steps, [h.get(key, float("nan")) for h in history], marker="o", ms=3, label=results.get("method", "steered"))
        if key in base:
            ax.axhline(base[key], color="gray", ls="--", label="base (frozen)")
        _env_steps_axis(ax)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best")
    fig.suptitle(f"{results.get('task')} - {results.get('method')} - seed {results.get('seed')}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_seed_comparison(runs_by_method: dict[str, list[dict]], path: str | Path, title: str = "") -> Path:
    """Mean over seeds with a min-max band, one line per method, for success, return and action entropy.

    ``runs_by_method``: method name -> list of results dicts (one per seed, as ``results.json``); seeds are
    aligned on their evaluation index (every run of a method evaluates at the same env steps).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    panels = [("success_rate", "success rate"), ("return_mean", "eval return"), ("action_entropy", "action entropy (k-NN, nats)")]
    base_drawn = False
    for method, runs in sorted(runs_by_method.items()):
        n = min(len(r["history"]) for r in runs)
        steps = np.mean([[h["env_steps"] for h in r["history"][:n]] for r in runs], axis=0)
        for ax, (key, label) in zip(axes, panels):
            values = np.array([[h[key] for h in r["history"][:n]] for r in runs])
            line, = ax.plot(steps, values.mean(0), marker="o", ms=3, label=f"{method} ({len(runs)} seeds)")
            ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
            _env_steps_axis(ax)
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
    # the frozen base is the same policy for every method: draw the mean over all runs once
    for ax, (key, _) in zip(axes, panels):
        base = [r["base"][key] for runs in runs_by_method.values() for r in runs if key in r["base"]]
        if base:
            ax.axhline(float(np.mean(base)), color="gray", ls="--", label="base (frozen)")
            base_drawn = True
    axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(title + ("" if base_drawn else " (no base metrics)"))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_update_windows(records_by_method: dict[str, list[list[dict]]], path: str | Path, keys: list[str],
                        title: str = "") -> Path:
    """Update metrics logged every window (metrics.jsonl ``"update"`` records), mean over runs per method, one panel
    per key (e.g. LP-DS's ``train/delta_sq``, ``train/multiplier``, ``train/violation``).

    ``records_by_method``: method name -> one list of update records per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(keys), figsize=(4.7 * len(keys), 3.6), squeeze=False)
    for method, runs in sorted(records_by_method.items()):
        runs = [[r for r in run if all(k in r for k in keys)] for run in runs]
        n = min((len(run) for run in runs), default=0)
        if n == 0:
            continue
        steps = np.mean([[r["env_steps"] for r in run[:n]] for run in runs], axis=0)
        for ax, key in zip(axes[0], keys):
            ax.plot(steps, np.mean([[r[key] for r in run[:n]] for run in runs], axis=0), label=f"{method} ({len(runs)} runs)")
            _env_steps_axis(ax)
            ax.set_ylabel(key.removeprefix("train/"))
            ax.grid(alpha=0.3)
    for ax in axes[0]:  # these span orders of magnitude across methods (a constrained residual vs a free one)
        ax.set_yscale("symlog", linthresh=1e-2)
    axes[0][0].legend(loc="best", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
