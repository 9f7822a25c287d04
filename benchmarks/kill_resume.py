"""Kill -9 a short training run at random points, again and again, and check that it resumes every time with no
lost transitions.

    python benchmarks/kill_resume.py --kills 20 --output benchmarks/results/kill_resume.json

A tiny recipe (LunarLanderContinuous-v3, a behaviour-cloned base of one 32-wide layer, a checkpoint every
iteration, an evaluation and an update record every 10, rollouts recorded) is trained once uninterrupted (the
reference) and once under fire: ``vla-steer train`` runs as a child process that is sent SIGKILL ``--kills`` times,
each time restarted with the same command, then left to finish. The first kill lands in one of the fresh run's
first three checkpoint writes (the first checkpoint has nothing to fall back on; no episode has ended yet); the kind
of each later one is drawn from a seeded RNG:

- ``checkpoint_write``: during the 1st-3rd checkpoint write after the restart, as soon as a chosen stage of the write
  shows on disk (``staging.tmp``: shared state, ``staging``: buffer, ``last.tmp``: files moving into the new
  checkpoint, ``last.old``: the renames);
- ``training``: at a random time within the next few iterations after the restart reports its start;
- ``evaluation``: at a random time within the iteration after an evaluation is logged;
- ``startup``: at a random time during start-up (imports, resume, the base's evaluation).

Checked after every kill: the checkpoint a restart must resume from (``last``, or after a kill between the two
renames of its atomic write ``last.tmp`` / ``last.old``) is complete, never older than one seen before, and holds
iterations x num_envs transitions; the restart reports (its progress bar) exactly that iteration. At the end:
iterations, env steps and updates equal the reference's; the final buffer holds iterations x num_envs transitions
and begins with every transition of every checkpoint seen after a kill (compared by hash); metrics.jsonl holds the
reference's records (one base evaluation; evaluations and update records at the same iterations, none missing or
twice); the rollout recording loads as a LeRobotDataset and holds the trainer's finished episodes (lengths and
returns, in order) plus only episodes that a killed process finished after its last checkpoint (counted as
orphans). Writes a JSON report to ``--output`` and prints a table; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

TINY_RECIPE = {
    "name": "kill_resume",
    # 20-step episodes: LunarLander cannot land or crash that soon, so every episode is truncated on a chunk
    # boundary and env steps are exactly iterations x num_envs x n_action_steps, however the run was interrupted
    "env": {"id": "LunarLanderContinuous-v3", "num_envs": 2, "max_episode_steps": 20},
    "demos": {"num_episodes": 3, "action_noise": 0.2, "max_episode_steps": 100},
    "base": {"type": "diffusion", "horizon": 2, "n_action_steps": 2, "hidden_dim": 32, "num_layers": 1,
             "num_inference_steps": 2, "num_train_timesteps": 20, "bc_steps": 100, "bc_batch_size": 64},
    "head": {"hidden_dim": 32, "num_layers": 1, "bound": 3.0},
    "algorithm": {"name": "lpds", "batch_size": 16, "utd": 1},
    "train": {"warmup_env_steps": 20, "eval_every": 40, "eval_episodes": 2,
              "eval_num_envs": 2, "entropy_states": 4, "entropy_draws": 8, "checkpoint_every": 1, "log_every": 40,
              "buffer_size": 10_000, "torch_threads": 1, "show_progress": True, "record_rollouts": True},
}
KILL_KINDS = {"checkpoint_write": 0.4, "training": 0.25, "evaluation": 0.2, "startup": 0.15}  # kind -> share
WRITE_STAGES = ("staging.tmp", "staging", "last.tmp", "last.old")  # what a checkpoint_write kill waits for
WRITE_LEFTOVERS = ("staging.tmp", "staging", "staging.old", "last.tmp", "last.old")  # only exist during a write
CANDIDATES = ("last", "last.tmp", "last.old")  # where a restart may resume from
PROCESS_TIMEOUT_S = 300
POLL_S = 0.0005


@dataclass
class Checkpoint:
    """What a checkpoint directory holds, as read from its files."""

    name: str
    iteration: int
    env_steps: int
    updates: int
    episodes: int
    buffer_size: int  # as its JSON says
    buffer_rows: int  # as its tensors hold
    buffer_digest: str


@dataclass
class Timing:
    """The reference run's pace, which the random kill times scale with."""

    startup_s: float
    iteration_s: float
    wall_s: float


@dataclass
class KillRule:
    """When to kill one run of the child (``kind`` ``finish``: never)."""

    kind: str
    delay_s: float = 0.0  # after the start (startup), its start report (training) or an evaluation record (evaluation)
    nth_write: int = 1  # checkpoint_write: which write after the start report
    stage: str = ""  # checkpoint_write: kill as soon as this stage of the write shows on disk

    @classmethod
    def draw(cls, kind: str, rng: random.Random, timing: Timing) -> KillRule:
        if kind == "startup":
            return cls(kind, delay_s=rng.uniform(0, timing.startup_s))
        if kind == "training":
            return cls(kind, delay_s=rng.uniform(0, 6 * timing.iteration_s))
        if kind == "evaluation":
            return cls(kind, delay_s=rng.uniform(0, timing.iteration_s))
        if kind == "checkpoint_write":
            return cls(kind, nth_write=rng.randint(1, 3), stage=rng.choice(WRITE_STAGES))
        return cls(kind)

    def due(self, watch: Watch, now: float) -> bool:
        if self.kind == "startup":
            return now >= watch.started + self.delay_s
        if self.kind == "training":
            return watch.reported_at is not None and now >= watch.reported_at + self.delay_s
        if self.kind == "evaluation":
            return watch.evaluated_at is not None and now >= watch.evaluated_at + self.delay_s
        if self.kind == "checkpoint_write":  # the stage made by this run, not left by an earlier kill
            return (watch.writes >= self.nth_write and self.stage in watch.leftovers
                    and watch.leftovers[self.stage] != watch.leftovers_at_start.get(self.stage))
        return False

    def spinning(self, watch: Watch) -> bool:
        """Poll without sleeping: a stage of the awaited write may last only microseconds."""
        return self.kind == "checkpoint_write" and watch.writing and watch.writes >= self.nth_write


@dataclass
class Trial:
    """One run of the child process (killed, or the last one, left to finish)."""

    index: int
    rule: dict
    expected_start: int  # the iteration it must resume from (0: a fresh start)
    reported_start: int | None = None  # from its progress bar
    fallback_message: bool = False  # it said it resumed from last.tmp / last.old
    killed_after_s: float | None = None
    in_checkpoint_write: bool = False
    write_stage: str = ""  # the write's leftovers on disk after the kill, e.g. "staging" or "last.tmp (no last)"
    checkpoint_after: dict | None = None  # the checkpoint the next run must resume from
    orphan_episodes: int = 0  # recorded episodes finished after that checkpoint (their iterations are redone)
    exit_code: int | None = None


@dataclass
class Recording:
    """Bookkeeping of the rollout recording across restarts."""

    episodes: int = 0  # recorded episodes when the current run started
    trainer_episodes: int = 0  # episodes the checkpoint it resumed from counts
    orphans: list[range] = field(default_factory=list)  # recording episode indices no checkpoint counts
    summary: dict | None = None  # the final check's counts


# -- the child process ----------------------------------------------------------------------------------------------
class Watch:
    """``vla-steer train`` as a child in its own process group, and what it shows: its start iteration (the
    progress bar in its log), checkpoint writes (leftovers in ``checkpoints/``), evaluations (metrics.jsonl)."""

    def __init__(self, recipe_path: Path, output_dir: Path, log_path: Path, algorithm: str):
        self.checkpoints, self.metrics = output_dir / "checkpoints", output_dir / "metrics.jsonl"
        self.log_path = log_path
        self.leftovers_at_start = self.leftovers = write_leftovers(self.checkpoints)
        self._stale = self.leftovers  # an earlier kill's leftovers, untouched until this run's first write
        env = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vla_steer.cli", "train", str(recipe_path), f"train.output_dir={output_dir}"],
                stdout=log, stderr=log, env=env, start_new_session=True)
        self.started = time.monotonic()
        self.killed_after_s: float | None = None
        self.reported_at: float | None = None
        self.start_iteration: int | None = None
        self.evaluated_at: float | None = None  # the newest evaluation record since the start report
        self.writing, self.writes = False, 0  # checkpoint writes begun since the start report
        self._metrics_size = 0
        self._progress = re.compile(rf"{re.escape(algorithm)}:\s+\d+%\|[^|]*\|\s*(\d+)/\d+ \[".encode())

    def poll(self, now: float) -> int | None:
        """Look again; returns the exit code, or ``None`` while it runs."""
        if self.start_iteration is None:
            match = self._progress.search(self.log_path.read_bytes())
            if match:
                self.start_iteration, self.reported_at = int(match.group(1)), now
                self._metrics_size = self.metrics.stat().st_size if self.metrics.exists() else 0
        elif self.metrics.exists() and self.metrics.stat().st_size > self._metrics_size:
            with open(self.metrics, "rb") as metrics:
                metrics.seek(self._metrics_size)
                new = metrics.read()
            self._metrics_size += len(new)
            if b'"event": "eval"' in new:
                self.evaluated_at = now
        self.leftovers = write_leftovers(self.checkpoints)
        if self.leftovers != self._stale:
            self._stale = None
        writing = bool(self.leftovers) and self._stale is None
        if writing and not self.writing:
            self.writes += self.reported_at is not None
        self.writing = writing
        return self.process.poll()

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def write_leftovers(checkpoints: Path) -> dict[str, tuple[int, int]]:
    """The scratch directories of a checkpoint write present now (name -> inode, mtime): none between writes."""
    found = {}
    for name in WRITE_LEFTOVERS:
        try:
            stat = (checkpoints / name).stat()
        except FileNotFoundError:
            continue
        found[name] = (stat.st_ino, stat.st_mtime_ns)
    return found


def run_child(recipe_path: Path, output_dir: Path, log_path: Path, algorithm: str,
              rule: KillRule) -> tuple[Watch, dict | None]:
    """Run the child until it exits or ``rule`` says kill; returns the watch and the write leftovers on disk after
    the kill (``None``: it exited by itself)."""
    watch = Watch(recipe_path, output_dir, log_path, algorithm)
    deadline = watch.started + PROCESS_TIMEOUT_S
    while True:
        now = time.monotonic()
        if watch.poll(now) is not None:
            return watch, None
        if rule.due(watch, now):
            watch.kill()
            watch.killed_after_s = now - watch.started
            return watch, write_leftovers(watch.checkpoints)
        if now > deadline:
            watch.kill()
            raise TimeoutError(f"the training process ran over {PROCESS_TIMEOUT_S} s; log: {log_path}")
        if not rule.spinning(watch):
            time.sleep(POLL_S)


# -- reading what is on disk ----------------------------------------------------------------------------------------
def buffer_digest(tensors: dict, rows: int) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key][:rows].contiguous().numpy().tobytes())
    return digest.hexdigest()


def read_checkpoint(directory: Path, files: list[str]) -> Checkpoint | None:
    """The checkpoint in ``directory`` if it holds every file a checkpoint has (``files``), else ``None``."""
    from vla_steer.training.checkpoint import load_tree

    if not all((directory / name).is_file() for name in files):
        return None
    state = json.loads((directory / "trainer_state.json").read_text())
    buffer = load_tree(directory, "buffer_rank0")
    rows = min(int(t.shape[0]) for t in buffer["tensors"].values())
    return Checkpoint(directory.name, state["iteration"], state["env_steps"], state["updates"],
                      len(state["train_episodes"]["length"]), buffer["size"], rows,
                      buffer_digest(buffer["tensors"], buffer["size"]))


def checkpoint_to_resume(checkpoints: Path, files: list[str]) -> Checkpoint | None:
    """The newest committed checkpoint: ``last`` when complete, else (a kill between the renames of its atomic
    write) the newer of ``last.tmp`` and ``last.old``. A complete ``last.tmp`` beside a complete ``last`` was
    never committed."""
    found = [c for c in (read_checkpoint(checkpoints / name, files) for name in CANDIDATES) if c is not None]
    if found and found[0].name == "last":
        return found[0]
    return max(found, key=lambda c: c.iteration, default=None)


def recorded_episodes(root: Path) -> int:
    info = root / "meta" / "info.json"
    return json.loads(info.read_text())["total_episodes"] if info.is_file() else 0


def logged_iterations(output_dir: Path) -> dict[str, list[int | None]]:
    """The iterations of the records in metrics.jsonl (``None`` where a record has none), per event, in file order."""
    logged: dict[str, list[int | None]] = {}
    for line in (output_dir / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            logged.setdefault(record.get("event"), []).append(record.get("iteration"))
    return logged


def check_recording(root: Path, trainer_episodes: dict, orphans: list[range], failures: list[str]) -> dict | None:
    """The recording loads, and without the orphaned episodes it is the trainer's episode list (lengths, returns)."""
    import numpy as np
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    try:
        dataset = LeRobotDataset(repo_id="vla_steer/rollouts", root=root)
    except Exception as error:  # noqa: BLE001 - whatever LeRobot raises, the recording is unusable
        failures.append(f"recording: {root} does not load as a LeRobotDataset ({type(error).__name__}: {error})")
        return None
    episode_index = np.asarray(dataset.hf_dataset["episode_index"])
    rewards = np.asarray(dataset.hf_dataset["next.reward"], dtype=np.float64).reshape(-1)
    lengths = np.bincount(episode_index, minlength=dataset.num_episodes)
    returns = np.bincount(episode_index, weights=rewards, minlength=dataset.num_episodes)
    orphaned = {i for block in orphans for i in block}
    kept = [i for i in range(dataset.num_episodes) if i not in orphaned]
    want_lengths, want_returns = trainer_episodes["length"], trainer_episodes["return"]
    if [int(lengths[i]) for i in kept] != want_lengths:
        failures.append(f"recording: episode lengths {[int(lengths[i]) for i in kept]} (orphans {sorted(orphaned)} "
                        f"left out) differ from the trainer's {want_lengths}")
    elif not np.allclose([returns[i] for i in kept], want_returns, rtol=1e-4, atol=1e-3):
        failures.append("recording: episode returns differ from the trainer's")
    return {"episodes": dataset.num_episodes, "frames": len(dataset), "trainer_episodes": len(want_lengths),
            "trainer_frames": int(sum(want_lengths)), "orphan_episodes": len(orphaned),
            "orphan_frames": int(sum(lengths[i] for i in orphaned))}


# -- the test -------------------------------------------------------------------------------------------------------
def prepare(work_dir: Path, kills: int, record_rollouts: bool) -> tuple[Path, dict]:
    """Write the recipe (its base behaviour-cloned here once, cached under ``work_dir``), long enough for ``kills``
    kills (5 iterations each, 50 more to finish); returns its path and contents."""
    from vla_steer.config import recipe_from_dict
    from vla_steer.pipeline import ensure_base

    recipe = json.loads(json.dumps(TINY_RECIPE))
    steps_per_iteration = recipe["env"]["num_envs"] * recipe["base"]["n_action_steps"]
    recipe["train"]["total_env_steps"] = steps_per_iteration * (50 + 5 * kills)
    recipe["train"]["cache_dir"] = str(work_dir / "cache")
    recipe["train"]["record_rollouts"] = record_rollouts
    recipe["base"]["path"] = str(ensure_base(recipe_from_dict(recipe), show_progress=False))
    path = work_dir / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path, recipe


def run_reference(recipe_path: Path, output_dir: Path, log_dir: Path, algorithm: str) -> Timing:
    """The uninterrupted run; returns its pace."""
    watch, _ = run_child(recipe_path, output_dir, log_dir / "reference.log", algorithm, KillRule("finish"))
    end = time.monotonic()
    if watch.process.returncode != 0 or watch.reported_at is None:
        raise RuntimeError(f"the reference run failed (exit {watch.process.returncode}):\n{watch.log_text()[-3000:]}")
    iterations = json.loads((output_dir / "checkpoints" / "last" / "trainer_state.json").read_text())["iteration"]
    return Timing(startup_s=watch.reported_at - watch.started, iteration_s=(end - watch.reported_at) / iterations,
                  wall_s=end - watch.started)


def run_kill_test(work_dir: Path, kills: int = 20, seed: int = 0, record_rollouts: bool = True) -> dict:
    """Train the tiny recipe once uninterrupted and once killed ``kills`` times (each time restarted with the same
    command); returns the report, whose ``failures`` list is empty when every check passed. ``record_rollouts``:
    record the training episodes too, and check the recording."""
    started = time.time()
    reference_dir, killed_dir, log_dir = work_dir / "reference", work_dir / "killed", work_dir / "logs"
    for directory in (reference_dir, killed_dir, log_dir):
        shutil.rmtree(directory, ignore_errors=True)
    log_dir.mkdir(parents=True)
    recipe_path, recipe = prepare(work_dir, kills, record_rollouts)
    algorithm, num_envs = recipe["algorithm"]["name"], recipe["env"]["num_envs"]
    steps_per_iteration = num_envs * recipe["base"]["n_action_steps"]
    timing = run_reference(recipe_path, reference_dir, log_dir, algorithm)
    files = sorted(p.name for p in (reference_dir / "checkpoints" / "last").iterdir())
    reference = read_checkpoint(reference_dir / "checkpoints" / "last", files)

    rng = random.Random(seed)
    failures: list[str] = []
    trials: list[Trial] = []
    seen: list[Checkpoint] = []  # after each kill, the checkpoint to resume from
    recording = Recording()
    newest = 0  # the newest iteration a checkpoint to resume from ever held
    for index in range(kills + 1):
        if index == kills:
            kind = "finish"
        elif index == 0:
            kind = "checkpoint_write"  # in the fresh run's first checkpoint writes
        else:
            kind = rng.choices(list(KILL_KINDS), weights=list(KILL_KINDS.values()))[0]
        rule = KillRule.draw(kind, rng, timing)
        trial = Trial(index, asdict(rule), expected_start=seen[-1].iteration if seen else 0)
        trials.append(trial)
        watch, leftovers = run_child(recipe_path, killed_dir, log_dir / f"run{index:02d}.log", algorithm, rule)
        trial.reported_start = watch.start_iteration
        trial.fallback_message = "resuming from" in watch.log_text()
        if trial.reported_start is not None and trial.reported_start != trial.expected_start:
            failures.append(f"run {index}: started at iteration {trial.reported_start}, but the checkpoint to resume "
                            f"from holds iteration {trial.expected_start}")
        if leftovers is None:
            trial.exit_code = watch.process.returncode
            if kind != "finish" or trial.exit_code != 0:
                failures.append(f"run {index} ({kind}) exited with code {trial.exit_code} before it was killed "
                                f"(log {watch.log_path}):\n{watch.log_text()[-2000:]}")
            break
        trial.killed_after_s = round(watch.killed_after_s, 4)
        trial.in_checkpoint_write = bool(leftovers) and leftovers != watch.leftovers_at_start
        if trial.in_checkpoint_write:
            trial.write_stage = "+".join(sorted(leftovers)) + ("" if (killed_dir / "checkpoints" / "last").exists()
                                                              else " (no last)")

        resume = checkpoint_to_resume(killed_dir / "checkpoints", files)
        iteration = resume.iteration if resume else 0
        if iteration < newest:
            failures.append(f"kill {index}: a checkpoint held iteration {newest}, but the newest complete checkpoint "
                            f"left holds iteration {iteration} (leftovers: {trial.write_stage or 'none'})")
        newest = max(newest, iteration)
        if resume is None:
            recording = Recording()  # a fresh start moves an earlier recording aside
            continue
        trial.checkpoint_after = asdict(resume)
        seen.append(resume)
        expected = (resume.iteration * num_envs, resume.iteration * num_envs, resume.iteration * steps_per_iteration)
        if (resume.buffer_size, resume.buffer_rows, resume.env_steps) != expected:
            failures.append(f"kill {index}: the checkpoint at iteration {resume.iteration} holds (transitions, tensor "
                            f"rows, env steps) {(resume.buffer_size, resume.buffer_rows, resume.env_steps)}, "
                            f"expected {expected}")
        if record_rollouts:
            episodes = recorded_episodes(killed_dir / "rollouts")
            survivors = resume.episodes - recording.trainer_episodes  # finished since the restart and checkpointed
            trial.orphan_episodes = episodes - recording.episodes - survivors
            if trial.orphan_episodes < 0:
                failures.append(f"kill {index}: the checkpoint counts {survivors} episodes finished since the restart, "
                                f"the recording holds {episodes - recording.episodes}")
            recording.orphans.append(range(recording.episodes + survivors, episodes))
            recording.episodes, recording.trainer_episodes = episodes, resume.episodes
    if trials[-1].rule["kind"] == "finish" and trials[-1].exit_code == 0:
        final_checks(killed_dir, files, reference, reference_dir, seen, recording, num_envs, failures)
    return report(trials, seen, reference, killed_dir, files, recording, timing, num_envs, failures,
                  time.time() - started, seed)


def final_checks(killed_dir: Path, files: list[str], reference: Checkpoint, reference_dir: Path, seen: list[Checkpoint],
                 recording: Recording, num_envs: int, failures: list[str]) -> None:
    """The finished run against the reference: counters, buffer, metrics log, recording."""
    from vla_steer.training.checkpoint import load_tree

    last = killed_dir / "checkpoints" / "last"
    final = read_checkpoint(last, files)
    if final is None:
        failures.append(f"the finished run left no complete checkpoint in {last}")
        return
    for name in ("iteration", "env_steps", "updates"):
        if getattr(final, name) != getattr(reference, name):
            failures.append(f"{name}: {getattr(final, name)}, the uninterrupted run's {getattr(reference, name)}")
    if not final.buffer_size == final.buffer_rows == reference.buffer_size == reference.iteration * num_envs:
        failures.append(f"final buffer: {final.buffer_size} transitions ({final.buffer_rows} tensor rows), expected "
                        f"{reference.iteration * num_envs} as in the uninterrupted run ({reference.buffer_size})")
    tensors = load_tree(last, "buffer_rank0")["tensors"]
    for checkpoint in seen:
        if buffer_digest(tensors, checkpoint.buffer_size) != checkpoint.buffer_digest:
            failures.append(f"the first {checkpoint.buffer_size} transitions of the final buffer differ from those of "
                            f"the checkpoint at iteration {checkpoint.iteration}: transitions lost or replaced")
    logged, reference_logged = logged_iterations(killed_dir), logged_iterations(reference_dir)
    for event in sorted(set(logged) | set(reference_logged), key=str):
        if logged.get(event) != reference_logged.get(event):
            failures.append(f"metrics.jsonl: {event!r} records at iterations {logged.get(event)}, the uninterrupted "
                            f"run's at {reference_logged.get(event)}")
    if (killed_dir / "rollouts").exists():
        state = json.loads((last / "trainer_state.json").read_text())
        recording.summary = check_recording(killed_dir / "rollouts", state["train_episodes"], recording.orphans,
                                            failures)


def report(trials: list[Trial], seen: list[Checkpoint], reference: Checkpoint, killed_dir: Path, files: list[str],
           recording: Recording, timing: Timing, num_envs: int, failures: list[str], wall_s: float, seed: int) -> dict:
    killed = [t for t in trials if t.killed_after_s is not None]
    restarts = trials[1:]
    final = read_checkpoint(killed_dir / "checkpoints" / "last", files) if trials[-1].exit_code == 0 else None
    stages: dict[str, int] = {}
    for trial in killed:
        if trial.in_checkpoint_write:
            stages[trial.write_stage] = stages.get(trial.write_stage, 0) + 1
    return {
        "seed": seed,
        "kills": len(killed),
        "kills_by_kind": {kind: sum(t.rule["kind"] == kind for t in killed) for kind in KILL_KINDS},
        "kills_in_checkpoint_write": sum(t.in_checkpoint_write for t in killed),
        "checkpoint_write_leftovers": stages,
        "restarts": len(restarts),
        "resumes_verified": sum(t.reported_start == t.expected_start > 0 for t in restarts),
        "fresh_starts_verified": sum(t.reported_start == t.expected_start == 0 for t in restarts),
        "restarts_killed_before_reporting": sum(t.reported_start is None for t in restarts),
        "fallback_resumes": sum(t.fallback_message for t in restarts),
        "finished": trials[-1].rule["kind"] == "finish" and trials[-1].exit_code == 0,
        "checkpoints_checked": len(seen),
        "transitions": {"expected": reference.iteration * num_envs, "reference": reference.buffer_size,
                        "found": final.buffer_size if final else None},
        "env_steps": {"reference": reference.env_steps, "found": final.env_steps if final else None},
        "updates": {"reference": reference.updates, "found": final.updates if final else None},
        "recording": recording.summary,
        "reference_timing_s": asdict(timing),
        "wall_time_s": round(wall_s, 1),
        "trials": [asdict(t) for t in trials],
        "failures": failures,
    }


def print_table(result: dict) -> None:
    rows = [
        ("kills", f"{result['kills']}  ({', '.join(f'{k} {n}' for k, n in result['kills_by_kind'].items())})"),
        ("  in a checkpoint write", f"{result['kills_in_checkpoint_write']}  ("
                                    + ", ".join(f"{s}: {n}" for s, n in result["checkpoint_write_leftovers"].items())
                                    + ")"),
        ("restarts", f"{result['restarts']}  (resumed as expected {result['resumes_verified']}, fresh as expected "
                     f"{result['fresh_starts_verified']}, killed before reporting "
                     f"{result['restarts_killed_before_reporting']}, from last.tmp/last.old "
                     f"{result['fallback_resumes']})"),
        ("checkpoints checked", str(result["checkpoints_checked"])),
        ("transitions expected / found", f"{result['transitions']['expected']} / {result['transitions']['found']}"),
        ("env steps reference / found", f"{result['env_steps']['reference']} / {result['env_steps']['found']}"),
        ("updates reference / found", f"{result['updates']['reference']} / {result['updates']['found']}"),
    ]
    if result["recording"]:
        r = result["recording"]
        rows.append(("recording episodes / frames", f"{r['episodes']} / {r['frames']}  (the trainer's "
                                                     f"{r['trainer_episodes']} / {r['trainer_frames']}, orphans "
                                                     f"{r['orphan_episodes']} / {r['orphan_frames']})"))
    rows.append(("wall time", f"{result['wall_time_s']:.0f} s  (uninterrupted run "
                              f"{result['reference_timing_s']['wall_s']:.1f} s)"))
    rows.append(("result", "PASS" if not result["failures"] else f"FAIL ({len(result['failures'])})"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    for failure in result["failures"]:
        print(f"FAILURE: {failure}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs before the run is left to finish")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill kinds and times")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench/kill_resume"),
                        help="runs, logs and the base's cache go here (earlier runs there are deleted first)")
    parser.add_argument("--no-record-rollouts", dest="record_rollouts", action="store_false",
                        help="train without train.record_rollouts (the recording is then not checked)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/kill_resume.json"))
    args = parser.parse_args()
    result = run_kill_test(args.work_dir.resolve(), args.kills, args.seed, args.record_rollouts)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"report: {args.output}")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
