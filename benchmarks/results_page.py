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


def _mean_sd_ci(values, digits: int = 2, wilson: list[float] | None = None) -> str:
    """Mean ± sample std [95% t-interval] over runs; one run: its value, with its Wilson interval when it is a
    success rate (``wilson``)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:  # no spread from one run
        within = f" [{wilson[0]:.{digits}f}, {wilson[1]:.{digits}f}] Wilson" if wilson else ""
        return f"{values.mean():.{digits}f}{within} (n = 1)"
    low, high = t_interval(values)
    return f"{values.mean():.{digits}f} ± {sample_std(values):.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def base_mean_lifts(runs: list[dict], key: str) -> dict[int, float]:
    """Each base's mean paired lift over its steering seeds: the unit a claim about a task rests on (runs on one
    base share it, so they are not independent draws of the method's effect)."""
    by_base: dict[int, list[float]] = {}
    for r in runs:
        by_base.setdefault(r["base_seed"], []).append(r["steered"][key] - r["base"][key])
    return {base: float(np.mean(lifts)) for base, lifts in sorted(by_base.items())}


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
    """One row per family and method: on how many tasks the 95% t-interval over the bases' mean lifts lies above 0 or
    below 0 (a task needs runs on 2 bases to be judged), the mean lift over those tasks, and the mean change of
    action entropy and drift."""
    lines = ["## At a glance", "", "Per family and method: tasks whose lift has its 95% t-interval above 0 (lifted) "
             "or below 0 (hurt), judged on the tasks with runs on at least 2 bases, the interval taken over the "
             "bases' mean lifts (each base's steering seeds averaged first: the protocol's claim is about the method "
             "on a task, not one base); the mean lift over those tasks; entropy change and drift averaged over all "
             "reported runs.", "",
             "| family | method | reported runs | tasks on 2+ bases | lifted | hurt | mean lift over those tasks | "
             "entropy change (nats) | drift |", "|---|---|---|---|---|---|---|---|---|"]
    for family, spec in suite["families"].items():
        key = primary_metric(spec)
        for method in spec["methods"]:
            runs = [r for r in reports if (r["family"], r["method"]) == (family, method)]
            expected = sum(1 for r in planned if (r.family, r.method) == (family, method))
            per_base = {task: base_mean_lifts([r for r in runs if r["task"] == task], key) for task in spec["tasks"]}
            judged = {task: t_interval(np.array(list(v.values()))) for task, v in per_base.items() if len(v) >= 2}
            entropy = [r["steered"]["action_entropy"] - r["base"]["action_entropy"] for r in runs]
            drift = [r["steered"]["action_drift"] for r in runs if "action_drift" in r["steered"]]
            fmt = "{:+.1f}" if key == "return_mean" else "{:+.2f}"
            mean_lift = np.mean([np.mean(list(per_base[t].values())) for t in judged]) if judged else None
            lines.append(f"| {family} | {method} | {len(runs)} / {expected} | {len(judged)} | "
                         f"{sum(low > 0 for low, _ in judged.values())} | {sum(high < 0 for _, high in judged.values())} | "
                         f"{fmt.format(mean_lift) if judged else ''} | "
                         f"{f'{np.mean(entropy):+.2f}' if entropy else ''} | {f'{np.mean(drift):.3f}' if drift else ''} |")
    return lines + ["", "Lifts are in success rate, or in return for families whose metric is return. The family "
                    "tables below give intervals over runs (bases x seeds), narrower while a task has one base.", ""]


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


def _short_commit(commit: str) -> str:
    """12 hex digits, and ``+dirty`` where the tree had uncommitted changes when the run started."""
    return commit[:12] + ("+dirty" if commit.endswith("+dirty") else "")


def _every_run(reports: list[dict], family: str, key: str, digits: int) -> list[str]:
    """A folded table of the family's runs, one row each: the numbers every cell above is computed from."""
    mine = sorted((r for r in reports if r["family"] == family), key=lambda r: (r["task"], r["method"], r["run"]))
    if not mine:
        return []
    rows = [f"| {r['task']} | {r['method']} | {r['base_seed']} | {r['steer_seed']} | "
            f"{r['training']['base_policy']['fingerprint']['weights'][:8]} | {r['base'][key]:.{digits}f} | "
            f"{r['steered'][key]:.{digits}f} | {r['steered'][key] - r['base'][key]:+.{digits}f} | "
            f"{_short_commit(r['training']['git_commit'])} |" for r in mine]
    return ["<details><summary>Every run (" + str(len(mine)) + ")</summary>", "",
            "| task | method | base | seed | base weights | base | steered | lift | commit |",
            "|---|---|---|---|---|---|---|---|---|", *rows, "", "</details>", ""]


def _table_row(task: str, method: str, runs: list[dict], expected: int, key: str, other: str, digits: int) -> str:
    """One (task, method) row of a family's table: run counts, bases, budget, the primary metric's base, steered and
    lift cells with their intervals, ``other`` as base -> steered, entropy and drift."""
    if not runs:
        return f"| {task} | {method} | 0 / {expected} | | | | | | | | |"
    wilson = (lambda metrics: metrics["success_wilson95"]) if key == "success_rate" else (lambda metrics: None)
    mean = lambda part, name: np.mean([r[part][name] for r in runs])  # noqa: E731
    steered = [r["steered"][key] for r in runs]
    lift = np.subtract(steered, [r["base"][key] for r in runs])
    executed = [r["training"]["env_steps"] for r in runs]
    # the base column counts each base build once: runs on one base share its one evaluation
    bases = list({r["training"]["base_policy"]["fingerprint"]["weights"]: r["base"] for r in runs}.values())
    return (f"| {task} | {method} | {len(runs)} / {expected} | {_bases_and_builds(runs)} | "
            f"{runs[0]['budget']} ({min(executed)}-{max(executed)}) | "
            f"{_mean_sd_ci([b[key] for b in bases], digits, wilson(bases[0]))} | "
            f"{_mean_sd_ci(steered, digits, wilson(runs[0]['steered']))} | {_mean_sd_ci(lift, digits)} | "
            f"{mean('base', other):.1f} -> {mean('steered', other):.1f} | "
            f"{mean('base', 'action_entropy'):.2f} -> {mean('steered', 'action_entropy'):.2f} | "
            f"{mean('steered', 'action_drift'):.3f} |")


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
        key = primary_metric(spec)  # gets the intervals; a second metric is shown as base -> steered
        # returns: the episode length beside them (success is 0 throughout); success: the return
        other = "episode_length" if key == "return_mean" else "return_mean"
        label, other_label, digits = ("return", "episode length", 1) if key == "return_mean" else ("success", "return", 2)
        lines += [f"## {spec.get('title', family)}", ""]
        lines += [f"| task | method | runs | bases | env steps: budget (executed) | base {label} | steered {label} | "
                  f"lift ({label}) | {other_label} (base -> steered) | entropy (nats) | drift |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for task in spec["tasks"]:
            for method in spec["methods"]:
                runs = [r for r in reports if r["task"] == task and r["method"] == method and r["family"] == family]
                expected = sum(1 for r in planned if (r.family, r.task, r.method) == (family, task, method))
                lines.append(_table_row(task, method, runs, expected, key, other, digits))
        lines += ["", "Executed env steps fall short of the budget because every method gets the same number of chunk "
                  "queries and a chunk that meets an episode's end runs fewer steps (PROTOCOL.md, budgets).", ""]
        lines += _every_run(reports, family, key, digits)
        lines.append("")
        if spec.get("papers"):  # the published numbers for the matching tasks (other bases and budgets: context only)
            lines += [f"Published: {spec['papers'].strip()}", ""]
        for task in spec["tasks"]:
            lines += _plots(reports, family, task, figures, path)
        lines.append("")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text
