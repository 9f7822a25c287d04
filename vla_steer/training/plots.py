"""Learning-curve plots (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


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
        ax.set_xlabel("env steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best")
    fig.suptitle(f"{results.get('task')} - {results.get('method')} - seed {results.get('seed')}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
