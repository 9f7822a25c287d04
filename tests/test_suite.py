"""The evidence suite (benchmarks/suite.py) enforces benchmarks/PROTOCOL.md and produces a report per run from the
saved head, on the reported seeds; RESULTS.md (benchmarks/results_page.py) is drawn from those reports."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_recipe_dict

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import results_page  # noqa: E402
import suite  # noqa: E402
from intervals import t_interval  # noqa: E402


def tiny_suite(tmp_path: Path, **protocol) -> dict:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(tmp_path, train={"total_env_steps": 80})))
    return {"output_dir": str(tmp_path / "runs"),
            "protocol": {"bases": [0, 1, 2], "steer_seeds": [0, 1], "tuning_seed_min": 100,
                         "report_eval_seed": 2_000_000, "report_episodes": 4, **protocol},
            "families": {"lander": {"tasks": {"lander": {"recipe": str(recipe), "budget": 80}},
                                    "methods": {"lpds": {"algorithm": {"name": "lpds", "batch_size": 32}}}}}}


@pytest.mark.parametrize("change, message", [
    (lambda s: s["protocol"].update(bases=[0, 1]), "at least 3 bases"),
    (lambda s: s["protocol"].update(steer_seeds=[0]), "at least 2 steering seeds"),
    (lambda s: s["protocol"].update(steer_seeds=[0, 100]), "reach the tuning seeds"),
    (lambda s: s["protocol"].update(report_eval_seed=1_000_001), "meet the tuning seeds"),
    (lambda s: s["families"]["lander"]["methods"]["lpds"].update(train={"total_env_steps": 160}), "train.total_env_steps"),
    (lambda s: s["families"]["lander"]["methods"]["lpds"].update(base={"hidden_dim": 64}), r"sets \['base'\]"),
    (lambda s: s["families"]["lander"]["tasks"]["lander"].update(budget=10_000_000), r"seeded up to \d+, into the evaluation"),
], ids=["two-bases", "one-seed", "tuning-seed", "eval-seeds-overlap", "method-budget", "method-base", "resume-seeds"])
def test_a_grid_breaking_the_protocol_is_refused_naming_the_rule(tmp_path, change, message):
    spec = tiny_suite(tmp_path)
    change(spec)
    with pytest.raises(suite.ProtocolError, match=message):
        suite.check_protocol(spec)


def test_breadth_first_covers_every_task_on_its_bases_before_a_second_seed(tmp_path):
    spec = tiny_suite(tmp_path)
    tasks = spec["families"]["lander"]["tasks"]
    tasks["lander_b"] = dict(tasks["lander"])
    depth = [(r.task, r.base, r.seed) for r in suite.plan(spec)]
    assert depth[:2] == [("lander", 0, 0), ("lander", 0, 1)] and depth[6] == ("lander_b", 0, 0)
    breadth = [(r.task, r.base, r.seed) for r in suite.plan(spec, breadth_first=True)]
    # bases before seeds: every task's three bases on seed 0, then seed 1
    assert breadth[:6] == [("lander", b, 0) if i % 2 == 0 else ("lander_b", b, 0) for b in (0, 1, 2) for i in (0, 1)]
    assert breadth[6] == ("lander", 0, 1)
    assert sorted(breadth) == sorted(depth)  # the same runs, in another order


def test_the_suite_runs_its_grid_resumably_and_reports_the_saved_head_on_unseen_seeds(tmp_path):
    spec = tiny_suite(tmp_path)
    suite.check_protocol(spec)
    runs = suite.plan(spec)
    assert [(r.base, r.seed) for r in runs] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]  # one method
    assert len({json.dumps(r.recipe["demos"]) for r in runs}) == 3  # three demonstration sets, one per base
    base_evaluations = tmp_path / "runs" / "cache" / "base_evaluations"
    for run in runs[:3]:
        lock = suite.claim(run)
        assert lock is not None and suite.claim(run) is None and suite.state(run) == "running"  # others skip it
        if run is runs[1]:  # evaluate base 0 afresh for the second seed: the cached evaluation must equal it
            shutil.rmtree(base_evaluations)
        report = suite.execute(run, spec["protocol"])
        lock.close()
        assert suite.state(run) == "done"
        assert report["reported_evaluation_seeds"] == [2_000_000, 2_000_001] and report["budget"] == 80
        assert report["training"]["evaluation_seeds"][0] == 1_000_000  # tuning seeds: not the reported ones
        assert report["steered"]["episodes"] == 4 and 0 <= report["steered"]["success_wilson95"][0] <= 1
        assert report["training"]["base_policy"]["fingerprint"] and report["training"]["hardware"]
    bases = {run.base: json.loads(run.report_file.read_text())["training"]["base_policy"]["fingerprint"]["weights"]
             for run in runs[:3]}
    assert bases[0] != bases[1]  # another base, not the same one reused
    # the base's reported evaluation depends on the base alone (not the steering seed): computed twice, the same
    # numbers; one cached evaluation per base, shared by its runs
    first, second = (json.loads(run.report_file.read_text())["base"] for run in runs[:2])
    assert first == second and len(list(base_evaluations.glob("*.json"))) == 2
    text = results_page.write_results(spec, tmp_path / "RESULTS.md")
    assert "| lander | lpds | 3 / 6 | 2 | 80 (" in text  # bases 0 and 1, one build each; then the executed steps
    assert "<details><summary>Every run (3)</summary>" in text  # each run's own numbers, folded
    for figure in ("lander_lander.png", "lander_lander_trust_region.png", "lifts.png"):  # curves, LP-DS, lifts
        assert (tmp_path / "benchmarks" / "suite_results" / figure).stat().st_size > 10_000
        assert f"(benchmarks/suite_results/{figure})" in text
    assert "Learning curves (lander, all 3 reported runs)" in text
    glance = next(line for line in text.splitlines() if line.startswith("| lander | lpds | 3 / 6 |"))
    reports = [json.loads(r.report_file.read_text()) for r in runs[:3]]
    lift = [r["steered"]["success_rate"] - r["base"]["success_rate"] for r in reports]
    lifted = t_interval([(lift[0] + lift[1]) / 2, lift[2]])[0] > 0  # over the bases' means: base 0's seeds averaged
    assert glance.split(" | ")[3:5] == ["1", str(int(lifted))]  # one task on 2 bases, judged by its interval
    # the figures are drawn from the reports: without the (uncommitted) train directories they are drawn again, and a
    # report without curves is counted as missing from them
    for run in runs[1:3]:
        shutil.rmtree(run.directory / "train")
    no_curves = json.loads(runs[2].report_file.read_text())
    assert no_curves.pop("curves")["update_windows"][-1]["train/multiplier"] >= 0  # LP-DS's multiplier per window
    runs[2].report_file.write_text(json.dumps(no_curves))
    # base 0 rebuilt on another CPU for its second seed (other weights from the same seeds): the row says so
    rebuilt = json.loads(runs[1].report_file.read_text())
    rebuilt["training"]["base_policy"]["fingerprint"]["weights"] = "0" * 64
    runs[1].report_file.write_text(json.dumps(rebuilt))
    (tmp_path / "benchmarks" / "suite_results" / "lander_lander.png").unlink()
    text = results_page.write_results(spec, tmp_path / "RESULTS.md")
    assert "Learning curves (lander, 2 of 3 reported runs" in text and "| lander | lpds | 3 / 6 | 2 (3 builds) | 80 (" in text
    assert (tmp_path / "benchmarks" / "suite_results" / "lander_lander.png").stat().st_size > 10_000
    # a sweep point equal to a finished run elsewhere in the grid takes its report instead of training again
    spec["families"]["sweep"] = {"tasks": spec["families"]["lander"]["tasks"],
                                 "methods": {"lpds_same": {"algorithm": {"name": "lpds", "batch_size": 32}},
                                             "lpds_other": {"algorithm": {"name": "lpds", "batch_size": 16}}}}
    grid = suite.plan(spec)
    same, other = (next(r for r in grid if r.method == m and (r.base, r.seed) == (0, 0)) for m in ("lpds_same", "lpds_other"))
    assert suite.finished_twin(other, grid) is None
    twin = suite.finished_twin(same, grid)
    assert twin == runs[0]
    copied = suite.reuse(same, twin)
    assert suite.state(same) == "done" and copied["same_run_as"] == runs[0].name and copied["method"] == "lpds_same"
    assert copied["steered"] == json.loads(runs[0].report_file.read_text())["steered"]
    assert (same.directory / "train" / "metrics.jsonl").is_file()  # its learning curve is the twin's
    del spec["families"]["sweep"]
    # a family without a success notion reports returns with intervals, and the papers' numbers under its table
    spec["families"]["lander"].update(metric="return", papers="Paper X: 200 on this task.")
    text = results_page.write_results(spec, tmp_path / "RESULTS.md")
    assert "| base return | steered return | lift (return) | episode length (base -> steered) |" in text
    assert "Published: Paper X: 200 on this task." in text
    del spec["families"]["lander"]["metric"], spec["families"]["lander"]["papers"]
    # editing a method after its runs finished: they are stale, and left out of the results
    spec["families"]["lander"]["methods"]["lpds"]["algorithm"]["batch_size"] = 16
    assert [suite.state(run) for run in suite.plan(spec)][:4] == ["stale", "stale", "stale", "todo"]
    assert "| lander | lpds | 0 / 6 |" in results_page.write_results(spec, tmp_path / "RESULTS.md")


def test_at_a_glance_judges_a_task_by_its_bases_mean_lifts(tmp_path):
    spec = tiny_suite(tmp_path)
    tasks = ("up", "down", "mixed", "uneven", "one_base")
    spec["families"]["lander"]["tasks"] = {t: {"recipe": "unused", "budget": 80} for t in tasks}
    lifts = {  # task -> base -> its steering seeds' lifts
        "up": {0: [0.30, 0.32], 1: [0.35, 0.33], 2: [0.31]},
        "down": {0: [-0.20, -0.25], 1: [-0.22], 2: [-0.21]},
        "mixed": {0: [0.10], 1: [-0.10]},
        # the runs alone would call this lifted (6 runs, interval [0.03, 0.32]); its 2 bases' means cannot
        "uneven": {0: [0.30, 0.31, 0.29], 1: [0.05, 0.06, 0.04]},
        "one_base": {0: [0.50, 0.52]},  # one base: not judged, however large
    }
    reports = [{"family": "lander", "method": "lpds", "task": task, "base_seed": base,
                "base": {"success_rate": 0.2, "action_entropy": 1.0},
                "steered": {"success_rate": 0.2 + lift, "action_entropy": 0.5, "action_drift": 0.1}}
               for task, bases in lifts.items() for base, values in bases.items() for lift in values]
    assert t_interval([lift for lift in lifts["uneven"][0] + lifts["uneven"][1]])[0] > 0
    row = results_page._at_a_glance(spec, reports, planned=[])[6]
    cells = row.split(" | ")
    # 4 tasks on 2+ bases; up lifted, down hurt; mean over the judged tasks of their base means (0.32, -0.22, 0, 0.175)
    assert cells[2:8] == ["19 / 0", "4", "1", "1", "+0.07", "-0.50"]


def test_a_single_runs_success_rate_carries_its_wilson_interval():
    assert results_page._mean_sd_ci([0.75], 2, wilson=[0.66, 0.82]) == "0.75 [0.66, 0.82] Wilson (n = 1)"
    assert results_page._mean_sd_ci([412.5], 1) == "412.5 (n = 1)"  # a return: no interval from one run
    assert results_page._mean_sd_ci([0.5, 0.7], 2, wilson=[0.1, 0.2]).startswith("0.60 ± 0.14 [")  # runs: t-interval
