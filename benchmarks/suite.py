"""The evidence suite: every (task, method, base, seed) of a suite file trained and evaluated under
benchmarks/PROTOCOL.md, resumably, and RESULTS.md regenerated from the runs that have finished.

    python benchmarks/suite.py                                  # benchmarks/suite.yaml: run what is not done, then RESULTS.md
    python benchmarks/suite.py --plan                           # list every run and its state; run nothing
    python benchmarks/suite.py --only metaworld/push-v3 --methods lpds dsrl_sac
    python benchmarks/suite.py --report                         # RESULTS.md from finished runs only

RESULTS.md is written by results_page.py from the reports. A run that finished is skipped; one that was interrupted
resumes from its checkpoint (the trainer's own resume); one whose recipe equals a finished run's elsewhere in the grid
(a sweep point that is another family's method) takes that run's report, marked ``same_run_as``, instead of training
the same thing again; two suite processes may share a grid (each run is claimed by a lock file). The grid is checked against the protocol
before anything runs: at least 3 bases and 2 steering seeds, equal env-step budgets for every method on a task
(methods may not touch the budget, the env, the demonstrations or the base), steering seeds below the tuning range,
and reported evaluation seeds disjoint from training and tuning seeds.
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).parent))
from intervals import wilson_interval  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_METHOD_FIELDS = {"env", "demos", "base", "train.total_env_steps", "train.warmup_env_steps", "train.seed",
                           "train.eval_seed", "train.output_dir"}
# Training env seeds: seed * 10_000 + process * 1_000 + i at the start, seed * 10_000 + iteration * 100 + i when a
# resumed run resets its envs (Collector.reset). They must stay below the evaluation seeds (1e6 and up).
MAX_TRAINING_ENV_SEED = 1_000_000


class ProtocolError(ValueError):
    """The suite file breaks benchmarks/PROTOCOL.md."""


@dataclass(frozen=True)
class Run:
    family: str
    task: str
    method: str
    base: int
    seed: int
    recipe: dict
    directory: Path

    @property
    def name(self) -> str:
        return f"{self.family}/{self.task}/{self.method}/base{self.base}_seed{self.seed}"

    @property
    def report_file(self) -> Path:
        return self.directory / "report.json"


# -------------------------------------------------------------------------------------------------------------
# the grid
def _merge(base: dict, override: dict) -> dict:
    """``override`` deep-merged over ``base``; an ``algorithm`` section replaces the template's whole (its fields
    depend on the method)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "algorithm":
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _touched(override: dict, prefix: str = "") -> set[str]:
    fields = set()
    for key, value in override.items():
        path = f"{prefix}{key}"
        fields.add(path)
        if isinstance(value, dict):
            fields |= _touched(value, path + ".")
    return fields


def load_suite(path: Path) -> dict:
    suite = yaml.safe_load(path.read_text())
    check_protocol(suite)
    return suite


def check_protocol(suite: dict) -> None:
    """Refuse a suite that breaks the protocol, naming the rule."""
    p = suite["protocol"]
    if len(set(p["bases"])) < 3:
        raise ProtocolError(f"protocol.bases {p['bases']}: every task needs at least 3 bases (demo and BC seeds)")
    if len(set(p["steer_seeds"])) < 2:
        raise ProtocolError(f"protocol.steer_seeds {p['steer_seeds']}: every base needs at least 2 steering seeds")
    if any(seed >= p["tuning_seed_min"] for seed in p["steer_seeds"]):
        raise ProtocolError(f"protocol.steer_seeds {p['steer_seeds']} reach the tuning seeds (>= {p['tuning_seed_min']})")
    for family, spec in suite["families"].items():
        for method, override in spec["methods"].items():
            touched = _touched(override) & FORBIDDEN_METHOD_FIELDS
            if touched:
                raise ProtocolError(f"{family}: method {method} sets {sorted(touched)}; budgets, envs, demonstrations "
                                    "and bases are the task's, equal for every method")
        for task, task_spec in spec["tasks"].items():
            if not isinstance(task_spec.get("budget"), int) or task_spec["budget"] < 1:
                raise ProtocolError(f"{family}/{task}: set budget, the env steps every method gets")
    for run in plan(suite):
        t, e, b = run.recipe["train"], run.recipe.get("env", {}), run.recipe.get("base", {})
        iterations = t["total_env_steps"] // (e.get("num_envs", 4) * b.get("n_action_steps", 4)) + 1
        highest = t["seed"] * 10_000 + iterations * 100 + e.get("num_envs", 4)
        if highest >= MAX_TRAINING_ENV_SEED:
            raise ProtocolError(f"{run.name}: resumed training envs would be seeded up to {highest}, into the "
                                "evaluation seeds (>= 1e6); use fewer iterations or lower steering seeds")
        tuning = range(t.get("eval_seed", 1_000_000), t.get("eval_seed", 1_000_000) + t.get("eval_num_envs", 10))
        reported = range(p["report_eval_seed"], p["report_eval_seed"] + p["report_episodes"])
        if set(tuning) & set(reported) or reported.start < MAX_TRAINING_ENV_SEED:
            raise ProtocolError(f"{run.name}: reported evaluation seeds {reported} meet the tuning seeds {tuning} or "
                                "the training seeds (< 1e6)")


def plan(suite: dict, only: list[str] | None = None, methods: list[str] | None = None,
         breadth_first: bool = False) -> list[Run]:
    """Every run of the grid, in order (task by task, then base, seed and method), filtered by task and method names.
    ``breadth_first``: every task's bases on the first steering seed before any second seed, base by base, so a
    partial grid covers every task, and on as many bases as it can (the claims RESULTS.md makes rest on bases)."""
    p, runs = suite["protocol"], []
    out = ROOT / suite.get("output_dir", "benchmarks/suite_runs")
    for family, spec in suite["families"].items():
        for task, task_spec in spec["tasks"].items():
            if only and task not in only and family not in only:
                continue
            template = yaml.safe_load((ROOT / task_spec["recipe"]).read_text())
            template = _merge(template, {k: v for k, v in task_spec.items() if k not in ("recipe", "budget")})
            # bases and seeds outermost: a grid stopped halfway has runs of every method on the same bases
            for base, seed, (method, override) in itertools.product(p["bases"], p["steer_seeds"], spec["methods"].items()):
                if methods and method not in methods:
                    continue
                directory = out / family / task / method / f"base{base}_seed{seed}"
                recipe = _merge(_merge(template, override), {
                    "name": f"{task}_{method}", "demos": {"seed": base}, "base": {"seed": base},
                    "train": {"seed": seed, "total_env_steps": task_spec["budget"], "show_progress": False,
                              "checkpoint_every": max(1, task_spec["budget"] // 4),  # a stopped suite loses little
                              "output_dir": str(directory / "train"), "cache_dir": str(out / "cache")}})
                runs.append(Run(family, task, method, base, seed, recipe, directory))
    if breadth_first:  # a stable sort: within one (seed, base), tasks and methods keep the suite's order
        seeds, bases = ({value: i for i, value in enumerate(p[key])} for key in ("steer_seeds", "bases"))
        runs.sort(key=lambda run: (seeds[run.seed], bases[run.base]))
    return runs


# -------------------------------------------------------------------------------------------------------------
# one run
def claim(run: Run):
    """The run's lock (``fcntl.flock`` on ``running.lock``, released by the kernel when the holder dies), or None
    when another suite process holds it. Keep the returned file open while running; close it to release."""
    import fcntl

    run.directory.mkdir(parents=True, exist_ok=True)
    lock = open(run.directory / "running.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock


def recipe_hash(recipe: dict) -> str:
    """What a finished run was trained with, less the fields that change neither data nor networks (the trainer's
    ``RESUMABLE_FIELDS``: evaluation, logging, checkpointing): a report whose hash differs is stale."""
    from vla_steer.training.checkpoint import RESUMABLE_FIELDS, flatten_recipe

    kept = {k: v for k, v in flatten_recipe(recipe).items() if k not in RESUMABLE_FIELDS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def state(run: Run) -> str:
    """done (a report for this recipe), stale (a report or run for another recipe), failed, running, started, todo."""
    import fcntl

    if run.report_file.is_file():
        return "done" if json.loads(run.report_file.read_text()).get("recipe_hash") == recipe_hash(run.recipe) else "stale"
    if (run.directory / "failed.json").is_file():
        return "failed"
    lock_path = run.directory / "running.lock"
    if lock_path.is_file():
        with open(lock_path) as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return "running"
    return "started" if (run.directory / "train").exists() else "todo"


def finished_twin(run: Run, grid: list[Run]) -> Run | None:
    """A finished run elsewhere in the grid trained with the same recipe (the same hash: same data, base, method,
    budget and seeds), e.g. a sweep's point that equals another family's method. Its result is this run's too."""
    own = recipe_hash(run.recipe)
    return next((other for other in grid if other.directory != run.directory and state(other) == "done"
                 and recipe_hash(other.recipe) == own), None)


def reuse(run: Run, twin: Run) -> dict:
    """``run``'s report from its finished twin: the same numbers under this run's name, marked ``same_run_as``; its
    ``train`` directory links to the twin's (learning curves)."""
    report = json.loads(twin.report_file.read_text())
    report.update(run=run.name, family=run.family, task=run.task, method=run.method, same_run_as=twin.name)
    run.directory.mkdir(parents=True, exist_ok=True)
    if not (run.directory / "train").exists() and (twin.directory / "train").exists():
        (run.directory / "train").symlink_to(os.path.relpath(twin.directory / "train", run.directory))
    write_report(run, report)
    return report


def saved_head_matches(trainer, head_dir: Path) -> bool:
    """Whether the head written to ``head_dir`` holds exactly the trainer's acting modules (what is evaluated)."""
    import torch

    from vla_steer.lerobot_policy import ActingHead

    saved = ActingHead.from_dir(head_dir).head_modules()
    for name, module in trainer.algo.head_modules().items():
        ours, theirs = module.state_dict(), saved[name].state_dict()
        if ours.keys() != theirs.keys() or not all(torch.equal(ours[k].cpu(), theirs[k]) for k in ours):
            return False
    return True


CURVE_KEYS = ("env_steps", "success_rate", "return_mean", "action_entropy")


def learning_curves(train_dir: Path) -> dict:
    """What RESULTS.md's figures need from a run's ``train`` directory, kept in its report (training directories are
    not committed, so a later session redraws the figures from reports alone): the tuning evaluations, the base's,
    and every update window's ``train/*`` metrics (LP-DS's trust region among them)."""
    results = json.loads((train_dir / "results.json").read_text())
    records = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines() if line]
    keep = lambda record: {k: v for k, v in record.items() if k in CURVE_KEYS}  # noqa: E731
    return {"history": [keep(h) for h in results["history"]], "base": keep(results["base"]),
            "update_windows": [{k: v for k, v in r.items() if k == "env_steps" or k.startswith("train/")}
                               for r in records if r.get("event") == "update"]}


def write_json(path: Path, value) -> None:
    """Atomically: a reader never sees half a file (the scratch name is per process: two suite processes may write
    the same report or base evaluation)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2))
    tmp.replace(path)


def write_report(run: Run, report: dict) -> None:
    write_json(run.report_file, report)


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """A digest of every source file of the vla_steer package (what the evaluation's numbers depend on)."""
    import vla_steer

    digest = hashlib.sha256()
    package = Path(vla_steer.__file__).parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def base_evaluation_file(recipe, results: dict, protocol: dict) -> Path:
    """Where the reported evaluation of a run's base is kept, to be shared by every method and steering seed on that
    base. The base's evaluation is a function of the base, the env, the evaluation settings, the reported seeds and
    the code (it seeds its start states and prior draws from the evaluation seed, and reads no head), so the key
    holds exactly those, the code as a digest of the package's sources; a report's base numbers are the same whether
    computed or read back."""
    t = recipe.train
    key = {"base": results["base_policy"]["fingerprint"], "env": recipe.to_dict()["env"],
           "eval": [t.eval_num_envs, t.entropy_states, t.entropy_draws],
           "seed": protocol["report_eval_seed"], "episodes": protocol["report_episodes"], "code": source_digest()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return Path(recipe.train.cache_dir).expanduser() / "base_evaluations" / f"{digest}.json"


def evaluate_base(evaluator, results: dict, protocol: dict) -> dict:
    """The base's reported evaluation, read from :func:`base_evaluation_file` when another run on this base made it."""
    cache = base_evaluation_file(evaluator.recipe, results, protocol)
    if cache.is_file():
        return json.loads(cache.read_text())
    metrics = evaluator.evaluate("base")
    write_json(cache, metrics)
    return metrics


def execute(run: Run, protocol: dict) -> dict:
    """Train (or resume) the run, then evaluate the saved head and its base on the reported seeds."""
    import dataclasses

    from vla_steer.config import recipe_from_dict
    from vla_steer.training import SteeringTrainer
    from vla_steer.training.evaluator import Evaluator

    recipe = recipe_from_dict(run.recipe)
    trainer = SteeringTrainer(recipe)
    results = trainer.run()
    if not saved_head_matches(trainer, Path(recipe.train.output_dir) / "head"):
        raise RuntimeError(f"{run.name}: the saved head differs from the trained one; not evaluating")
    episodes = protocol["report_episodes"]
    train = dataclasses.replace(recipe.train, eval_episodes=episodes, eval_num_envs=min(episodes, recipe.train.eval_num_envs))
    evaluator = Evaluator(dataclasses.replace(recipe, train=train), trainer.base, trainer.layout,
                          seed=protocol["report_eval_seed"])
    report = {"run": run.name, "family": run.family, "task": run.task, "method": run.method, "base_seed": run.base,
              "steer_seed": run.seed, "budget": recipe.train.total_env_steps, "recipe_hash": recipe_hash(run.recipe),
              "reported_evaluation_seeds": [protocol["report_eval_seed"] + i for i in range(train.eval_num_envs)],
              "reported_episodes": episodes}
    for label, metrics in (("base", evaluate_base(evaluator, results, protocol)),
                           ("steered", evaluator.evaluate("policy", trainer.algo))):
        successes = round(metrics["success_rate"] * metrics["episodes"])
        report[label] = {**metrics, "successes": successes,
                         "success_wilson95": wilson_interval(successes, int(metrics["episodes"]))}
    report["training"] = {k: results[k] for k in ("env_steps", "updates", "wall_time_s", "base_policy",
                                                  "evaluation_seeds", "training_env_seed", "git_commit", "versions",
                                                  "hardware")}
    # the commit alone does not name the code of a run started from a dirty tree: the sources' digest does
    report["training"]["vla_steer_source_digest"] = source_digest()
    report["recipe"] = recipe.to_dict()
    try:
        report["curves"] = learning_curves(Path(recipe.train.output_dir))
    except (OSError, ValueError, KeyError) as error:  # figure data only: the reported evaluation is kept without it
        tqdm.write(f"{run.name}: no learning curves in the report ({type(error).__name__}: {error})")
    write_report(run, report)
    return report


def backfill_curves(run: Run) -> None:
    """A report written before reports kept their curves gets them from the run's ``train`` directory, when this
    machine still has it."""
    report = json.loads(run.report_file.read_text())
    train_dir = run.directory / "train"
    if "curves" not in report and (train_dir / "results.json").is_file() and (train_dir / "metrics.jsonl").is_file():
        report["curves"] = learning_curves(train_dir)
        write_report(run, report)


def primary_metric(spec: dict) -> str:
    """The metric a family's intervals are about: ``return_mean`` for ``metric: return`` (tasks without a success
    notion), else ``success_rate``."""
    return "return_mean" if spec.get("metric") == "return" else "success_rate"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", type=Path, default=Path(__file__).parent / "suite.yaml")
    parser.add_argument("--only", nargs="*", help="task or family names")
    parser.add_argument("--methods", nargs="*")
    parser.add_argument("--breadth-first", action="store_true",
                        help="every task's bases on the first steering seed before any second seed, base by base (a "
                             "partial grid then covers every task on as many bases as it can; the default finishes "
                             "one task's bases and seeds before the next task)")
    parser.add_argument("--plan", action="store_true", help="list the runs and their state; run nothing")
    parser.add_argument("--report", action="store_true", help="regenerate RESULTS.md only")
    parser.add_argument("--results", type=Path, default=ROOT / "RESULTS.md")
    args = parser.parse_args()
    suite = load_suite(args.suite)
    runs, grid = plan(suite, args.only, args.methods, args.breadth_first), plan(suite)
    if args.plan:
        for run in runs:
            print(f"{state(run):8s} {run.name}")
        return
    if not args.report:
        for run in tqdm([run for run in runs if state(run) != "done"], desc="suite", unit="run"):
            lock = claim(run)
            if lock is None or state(run) == "done":  # another process has it, or just finished it
                if lock is not None:
                    lock.close()
                continue
            try:
                previous = state(run)
                if previous in ("stale", "failed"):  # trained with an earlier suite file, or crashed: kept aside
                    if (run.directory / "train").exists():
                        (run.directory / "train").rename(run.directory / f"train.{previous}-{time.strftime('%Y%m%d-%H%M%S')}")
                    for name in ("report.json", "failed.json"):
                        (run.directory / name).unlink(missing_ok=True)
                twin = finished_twin(run, grid) if previous == "todo" else None
                report = reuse(run, twin) if twin else execute(run, suite["protocol"])
                key = primary_metric(suite["families"][run.family])
                tqdm.write(f"{run.name}{' (same run as ' + twin.name + ')' if twin else ''}: {key} of the base "
                           f"{report['base'][key]:.2f} -> steered {report['steered'][key]:.2f}")
            except Exception as error:  # one broken run must not stop the grid: recorded, shown in --plan
                (run.directory / "failed.json").write_text(json.dumps({"error": f"{type(error).__name__}: {error}"}))
                tqdm.write(f"{run.name}: FAILED ({type(error).__name__}: {error})")
            finally:
                lock.close()
    from results_page import write_results

    print(write_results(suite, args.results))


if __name__ == "__main__":
    main()
