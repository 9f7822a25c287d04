"""RESULTS.md from the evidence suite's reports (benchmarks/suite.py writes one per finished run): an at-a-glance
table, a forest plot of every task's paired lift, and per family a table with intervals, learning curves and LP-DS's
trust-region dynamics. Only reports of the grid's current recipes count (stale ones are left out).

    python benchmarks/suite.py --report
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from intervals import sample_std, t_interval
from suite import ROOT, Run, backfill_curves, plan, primary_metric, recipe_hash, state


def _mean_sd_ci(values, digits: int = 2) -> str:
    values = np.asarray(values, dtype=float)
    if len(values) < 2:  # no spread from one run
        return f"{values.mean():.{digits}f} (n = 1)"
    low, high = t_interval(values)
    return f"{values.mean():.{digits}f} ± {sample_std(values):.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _plots(reports: list[dict], family: str, task: str, figures: Path, page: Path) -> list[str]:
    """Learning curves (tuning evaluations, mean and range over runs) and, for LP-DS variants, the trust region's
    dynamics (E||Delta||^2, multiplier, violation per update window) from the reports' curves; returns markdown
    image lines, each saying how many of the task's runs it draws (runs reported before reports kept their curves
    have none)."""
    from vla_steer.training.plots import plot_seed_comparison, plot_update_windows

    mine = [r for r in reports if (r["family"], r["task"]) == (family, task)]
    drawn = [r for r in mine if "curves" in r]
    results, windows = {}, {}
    for report in drawn:
        results.setdefault(report["method"], []).append(report["curves"])
        windows.setdefault(report["method"], []).append(report["curves"]["update_windows"])
    if not results:
        return [f"(No learning curves for {task}: its {len(mine)} reported runs predate reports keeping them.)", ""] if mine else []
    missing = len(mine) - len(drawn)
    caption = f"{task}, " + (f"all {len(mine)} reported runs" if not missing else
                             f"{len(drawn)} of {len(mine)} reported runs (runs reported before reports kept curves have none)")
    figures.mkdir(parents=True, exist_ok=True)
    name = f"{family}_{task}"
    curves = plot_seed_comparison(results, figures / f"{name}.png", f"{family}: {task} (tuning evaluations)")
    lines = [f"Learning curves ({caption}):", "", f"![{task} learning curves]({os.path.relpath(curves, page.parent)})"]
    lpds = {m: runs for m, runs in windows.items() if any("train/delta_sq" in r for run in runs for r in run)}
    if lpds:
        plot = plot_update_windows(lpds, figures / f"{name}_trust_region.png",
                                   ["train/delta_sq", "train/multiplier", "train/violation"], f"{task}: LP-DS trust region")
        lines.append(f"![{task} LP-DS trust region]({os.path.relpath(plot, page.parent)})")
    return lines + [""]


def _bases_and_builds(runs: list[dict]) -> str:
    """How many bases a table row's runs sit on, and how many distinct weights those bases had: a base is rebuilt
    from its seeds when a machine lacks the cache, and MKL's kernels differ by CPU (AVX-512 vs AVX2), so a rebuild
    on another CPU gives other weights (``benchmarks/base_build_reproducibility.py``). Each run's lift is paired with
    its own base's evaluation either way; the count says how many of the row's "bases" are really two builds."""
    seeds = {r["base_seed"] for r in runs}
    builds = {r["training"]["base_policy"]["fingerprint"]["weights"] for r in runs}
    return str(len(seeds)) if len(builds) == len(seeds) else f"{len(seeds)} ({len(builds)} builds)"


def _at_a_glance(suite: dict, reports: list[dict], planned: list[Run]) -> list[str]:
    """One row per family and method: on how many tasks the paired lift's 95% t-interval lies above 0 or below 0 (a
    task needs 2 runs for an interval), the mean lift over tasks, and the mean change of action entropy and drift."""
    lines = ["## At a glance", "", "Per family and method: tasks whose paired lift has its 95% t-interval above 0 "
             "(lifted) or below 0 (hurt), among the tasks with at least 2 reported runs; the mean lift over those "
             "tasks; entropy change and drift averaged over all reported runs.", "",
             "| family | method | reported runs | tasks with 2+ runs | lifted | hurt | mean lift over tasks | "
             "entropy change (nats) | drift |", "|---|---|---|---|---|---|---|---|---|"]
    for family, spec in suite["families"].items():
        key = primary_metric(spec)
        for method in spec["methods"]:
            runs = [r for r in reports if (r["family"], r["method"]) == (family, method)]
            expected = sum(1 for r in planned if (r.family, r.method) == (family, method))
            lifts = {task: [r["steered"][key] - r["base"][key] for r in runs if r["task"] == task] for task in spec["tasks"]}
            judged = {task: t_interval(np.asarray(v)) for task, v in lifts.items() if len(v) >= 2}
            entropy = [r["steered"]["action_entropy"] - r["base"]["action_entropy"] for r in runs]
            drift = [r["steered"]["action_drift"] for r in runs if "action_drift" in r["steered"]]
            fmt = "{:+.1f}" if key == "return_mean" else "{:+.2f}"
            lines.append(f"| {family} | {method} | {len(runs)} / {expected} | {len(judged)} | "
                         f"{sum(low > 0 for low, _ in judged.values())} | {sum(high < 0 for _, high in judged.values())} | "
                         f"{fmt.format(np.mean([np.mean(lifts[t]) for t in judged])) if judged else ''} | "
                         f"{f'{np.mean(entropy):+.2f}' if entropy else ''} | {f'{np.mean(drift):.3f}' if drift else ''} |")
    return lines + ["", "Lifts are in success rate, or in return for families whose metric is return.", ""]


def _lift_figure(suite: dict, reports: list[dict], figures: Path, page: Path) -> list[str]:
    """One panel per family: each task's paired lift per method, mean with its 95% t-interval (a hollow marker where
    a single run gives no interval), and 0 marked; returns the markdown lines that show it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = [(f, spec) for f, spec in suite["families"].items() if any(r["family"] == f for r in reports)]
    if not families:
        return []
    heights = [max(1.2, 0.5 * len(spec["tasks"]) * (1 + 0.15 * len(spec["methods"]))) for _, spec in families]
    fig, axes = plt.subplots(len(families), 1, figsize=(8, sum(heights) + 0.9 * len(families)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (family, spec) in zip(axes[:, 0], families):
        key = primary_metric(spec)
        methods, tasks = list(spec["methods"]), list(spec["tasks"])
        for m, method in enumerate(methods):
            offset = (m - (len(methods) - 1) / 2) * 0.8 / max(len(methods), 1)
            for t, task in enumerate(tasks):
                lifts = np.array([r["steered"][key] - r["base"][key] for r in reports
                                  if (r["family"], r["task"], r["method"]) == (family, task, method)])
                if not len(lifts):
                    continue
                y, color = t + offset, f"C{m}"
                if len(lifts) >= 2:
                    low, high = t_interval(lifts)
                    ax.errorbar(lifts.mean(), y, xerr=[[lifts.mean() - low], [high - lifts.mean()]], fmt="o",
                                color=color, capsize=3)
                else:
                    ax.plot(lifts.mean(), y, "o", mfc="none", color=color)
                ax.annotate(f"n={len(lifts)}", (lifts.mean(), y), textcoords="offset points", xytext=(4, 3), fontsize=6)
        for m, method in enumerate(methods):  # one legend entry per method, whatever its runs
            ax.plot([], [], "o", color=f"C{m}", label=method)
        ax.axvline(0, color="gray", lw=1)
        ax.set_yticks(range(len(tasks)), tasks)
        ax.set_ylim(len(tasks) - 0.5, -0.5)
        ax.set_xlabel(f"paired lift in {'return' if key == 'return_mean' else 'success rate'} (steered - its base)")
        ax.set_title(spec.get("title", family).split(" (")[0], fontsize=9)
        ax.grid(alpha=0.3, axis="x")
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    figures.mkdir(parents=True, exist_ok=True)
    figure = figures / "lifts.png"
    fig.savefig(figure, dpi=110)
    plt.close(fig)
    return [f"![paired lift per task and method]({os.path.relpath(figure, page.parent)})", "",
            "Filled markers: mean lift with its 95% t-interval over runs; hollow: a single run (no interval).", ""]


def write_results(suite: dict, path: Path, figures: Path | None = None) -> str:
    """RESULTS.md at ``path`` from every finished run's report, with its figures in ``figures``."""
    figures = figures or path.parent / "benchmarks" / "suite_results"
    out = ROOT / suite.get("output_dir", "benchmarks/suite_runs")
    planned = plan(suite)
    current = {str(run.report_file): recipe_hash(run.recipe) for run in planned}
    for run in planned:
        if state(run) == "done":
            backfill_curves(run)
    reports = [report for f in sorted(out.rglob("report.json"))
               if current.get(str(f)) == (report := json.loads(f.read_text())).get("recipe_hash")]  # not stale ones
    lines = ["# Results", "", "Generated by `python benchmarks/suite.py` under [the protocol](benchmarks/PROTOCOL.md): "
             "reported seeds disjoint from training and tuning, the saved head evaluated. Cells: mean ± sample std "
             "[95% t-interval] over runs (bases x steering seeds); lift = steered minus its own base, paired. Bases: "
             "the demonstration/BC seeds a row's runs use, and in brackets how many distinct weights they had where a "
             "base was rebuilt on another CPU (PROTOCOL.md, base builds).", ""]
    lines += _at_a_glance(suite, reports, planned)
    lines += _lift_figure(suite, reports, figures, path)
    for family, spec in suite["families"].items():
        key = primary_metric(spec)  # gets the intervals; the other metric is shown as base -> steered
        other = "success_rate" if key == "return_mean" else "return_mean"
        label, other_label, digits = ("return", "success", 1) if key == "return_mean" else ("success", "return", 2)
        lines += [f"## {spec.get('title', family)}", ""]
        lines += [f"| task | method | runs | bases | env steps | base {label} | steered {label} | lift ({label}) | "
                  f"{other_label} (base -> steered) | entropy (nats) | drift |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for task in spec["tasks"]:
            for method in spec["methods"]:
                runs = [r for r in reports if r["task"] == task and r["method"] == method and r["family"] == family]
                expected = sum(1 for r in planned if (r.family, r.task, r.method) == (family, task, method))
                if not runs:
                    lines.append(f"| {task} | {method} | 0 / {expected} | | | | | | | | |")
                    continue
                get = lambda part, name: [r[part][name] for r in runs]  # noqa: E731
                lift = np.subtract(get("steered", key), get("base", key))
                fmt = "{:.1f}" if other == "return_mean" else "{:.2f}"
                lines.append(f"| {task} | {method} | {len(runs)} / {expected} | {_bases_and_builds(runs)} | {runs[0]['budget']} | "
                             f"{_mean_sd_ci(get('base', key), digits)} | {_mean_sd_ci(get('steered', key), digits)} | "
                             f"{_mean_sd_ci(lift, digits)} | {fmt.format(np.mean(get('base', other)))} -> "
                             f"{fmt.format(np.mean(get('steered', other)))} | "
                             f"{np.mean(get('base', 'action_entropy')):.2f} -> {np.mean(get('steered', 'action_entropy')):.2f} | "
                             f"{np.mean(get('steered', 'action_drift')):.3f} |")
        lines.append("")
        if spec.get("papers"):  # the published numbers for the matching tasks (other bases and budgets: context only)
            lines += [f"Published: {spec['papers'].strip()}", ""]
        for task in spec["tasks"]:
            lines += _plots(reports, family, task, figures, path)
        lines.append("")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text
