"""Table (markdown), summary JSON and one seed-comparison plot per task over every results JSON in
benchmarks/results/.

    python benchmarks/summarize.py
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from intervals import sample_std, t_interval
from vla_steer.training.plots import plot_seed_comparison

RESULTS = Path(__file__).parent / "results"


def base_label(result: dict) -> str:
    """The base policy type (``LeRobot <type>`` for a LeRobot checkpoint), plus the observation kind when it is not
    the flat state."""
    config = result.get("config", {})
    family = result.get("base_policy", {}).get("family", "native")
    base = config.get("base", {}).get("type", "diffusion") if family == "native" else f"LeRobot {family}"
    observation = config.get("env", {}).get("observation", "state")
    return base if observation == "state" else f"{base} ({observation})"


def main() -> None:
    groups = defaultdict(list)
    for path in sorted(RESULTS.glob("*_seed*.json")):
        r = json.loads(path.read_text())
        groups[(r["task"], base_label(r), r["method"])].append(r)
    rows, summary = [], []
    header = "| task | base | method | seeds | env steps | base success | steered success | lift (points) | base return | steered return | base entropy | steered entropy | minutes |"
    rows += [header, "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (task, base, method), runs in sorted(groups.items()):
        get = lambda part, key: np.array([r[part][key] for r in runs], dtype=float)  # noqa: E731
        bs, ss = get("base", "success_rate"), get("final", "success_rate")
        br, sr = get("base", "return_mean"), get("final", "return_mean")
        be, se = get("base", "action_entropy"), get("final", "action_entropy")
        lift = 100 * (ss - bs)
        minutes = np.array([r["wall_time_s"] / 60 for r in runs])
        fmt = lambda a, s=1.0, d=2: f"{(a * s).mean():.{d}f} ± {sample_std(a * s):.{d}f}"  # noqa: E731
        rows.append(f"| {task} | {base} | {method} | {len(runs)} | {int(np.mean([r['env_steps'] for r in runs]))} | {fmt(bs)} | {fmt(ss)} | "
                    f"{fmt(lift, d=0)} | {fmt(br, d=1)} | {fmt(sr, d=1)} | {fmt(be)} | {fmt(se)} | {minutes.max():.1f} |")
        summary.append({"task": task, "base": base, "method": method, "seeds": [r["seed"] for r in runs],
                        "base_success": bs.tolist(), "steered_success": ss.tolist(), "lift_points_mean": float(lift.mean()),
                        "lift_points_std": sample_std(lift),
                        "lift_points_t95": t_interval(lift),
                        "first_eval_success": [r["history"][0]["success_rate"] for r in runs if r.get("history")], "base_return": br.tolist(), "steered_return": sr.tolist(),
                        "base_entropy": be.tolist(), "steered_entropy": se.tolist(), "max_minutes": float(minutes.max())})
    for task, base in sorted({(task, base) for task, base, _ in groups}):
        by_method = {method: runs for (t, b, method), runs in groups.items() if (t, b) == (task, base)}
        tag = "" if base == "diffusion" else "_" + base.split(" (")[0].lower().replace(" ", "_")  # built-in DDIM: historic name
        plot = plot_seed_comparison(by_method, RESULTS / f"{task.replace('/', '_')}{tag}_methods.png",
                                    title=f"{task}, {base} base")
        print(f"plot: {plot}")
    table = "\n".join(rows)
    print(table)
    (RESULTS / "summary.md").write_text(table + "\n\nmean ± sample std (n - 1) over seeds; success over 50 evaluation "
                                                 "episodes per run.\n")
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
