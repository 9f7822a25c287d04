"""Kill -9 a short training run 20 times at random points (checkpoint writes included) and check that it resumes every
time with no lost transitions: benchmarks/kill_resume.py's run, asserted. About a minute on 2 CPU cores."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "kill_resume.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("kill_resume", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_twenty_kills_resume_every_time_without_losing_transitions(tmp_path):
    result = load_benchmark().run_kill_test(tmp_path, kills=20, seed=0, record_rollouts=True)
    assert result["failures"] == [], "\n\n".join(result["failures"])
    assert result["kills"] == 20 and result["restarts"] == 20 and result["finished"]
    assert result["kills_in_checkpoint_write"] >= 1, "no kill landed in a checkpoint write"
    # every restart that lived to report its start began where the newest checkpoint left off
    restarts = (result["resumes_verified"], result["fresh_starts_verified"], result["restarts_killed_before_reporting"])
    assert sum(restarts) == 20
    assert result["resumes_verified"] >= 10 and result["checkpoints_checked"] >= 10
    transitions = result["transitions"]
    assert transitions["found"] == transitions["expected"] == transitions["reference"]
    assert result["env_steps"]["found"] == result["env_steps"]["reference"]
    assert result["updates"]["found"] == result["updates"]["reference"]
    recording = result["recording"]
    assert recording["frames"] == recording["trainer_frames"] + recording["orphan_frames"]
    assert recording["episodes"] == recording["trainer_episodes"] + recording["orphan_episodes"]
