"""RolloutRecorder: rollouts of interleaved envs -> a LeRobotDataset v3 that reloads exactly, survives kill -9,
and feeds offline_chunk_transitions."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import logging
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from vla_steer.adapters.native import NativePolicyAdapter
from vla_steer.data.offline import offline_chunk_transitions
from vla_steer.data.recording import RECORDER_MARKER, RolloutRecorder
from vla_steer.policies import ChunkPolicyConfig, build_chunk_policy

torch.set_num_threads(1)

STATE, A, L, K = 5, 2, 6, 3
H, W = 12, 16  # not square: a swapped height / width would show
OBS = {"observation.state": {"dtype": "float32", "shape": (STATE,)},
       "observation.image": {"dtype": "image", "shape": (3, H, W)}}


def chunk(rng, start_row=0, rows=K, done_at=None, image="float"):
    """One executed chunk: frames (as the collector passes them) and what the dataset must hold for each."""
    latent = rng.standard_normal(L).astype(np.float32)
    frames, expected = [], []
    for row in range(start_row, start_row + rows):
        pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        done = done_at is not None and row == done_at
        frame = {"observation.state": rng.standard_normal(STATE),  # float64: stored as float32
                 "observation.image": pixels if image == "uint8" else torch.from_numpy(pixels.transpose(2, 0, 1) / 255.0),
                 "action": rng.uniform(-1, 1, A).astype(np.float32), "latent": torch.from_numpy(latent),
                 "reward": float(rng.random()), "success": done, "done": done, "chunk_row": row}
        frames.append(frame)
        expected.append({"state": np.float32(frame["observation.state"]), "pixels": pixels, "action": frame["action"],
                         "latent": latent, "reward": np.float32(frame["reward"]), "done": done, "row": row})
        if done:
            break
    return frames, expected


def recorder(root, **kwargs):
    return RolloutRecorder(root, fps=10, observation_features=OBS, action_dim=A, latent_dim=L, task="push the puck",
                           **kwargs)


def native_adapter():
    policy = build_chunk_policy(ChunkPolicyConfig(type="flow", obs_dim=STATE, action_dim=A, horizon=K,
                                                  n_action_steps=K, hidden_dim=16, num_layers=1))
    return NativePolicyAdapter(policy)


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """Two envs interleaved: env 1's episode terminates first (episode 0), env 0's is truncated (episode 1),
    env 1's next episode is still running at close (dropped)."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("rec") / "rollouts"
    episodes = {0: [], 1: []}
    rec = recorder(root)

    def add(env, frames_expected):
        frames, expected = frames_expected
        rec.add_frames(env, frames)
        episodes[env].extend(expected)

    add(0, chunk(rng, image="float"))
    add(1, chunk(rng, image="uint8"))
    add(0, chunk(rng, image="float"))
    add(1, chunk(rng, done_at=1, image="uint8"))  # terminates on the chunk's second row
    assert rec.pending_frames == {0: 6, 1: 5}
    indices = [rec.end_episode(1)]
    add(0, chunk(rng, rows=1))  # a time limit cut the chunk short (not done)
    indices.append(rec.end_episode(0))
    rec.add_frames(1, chunk(rng)[0])  # still running at close
    rec.close()
    return root, indices, [episodes[1], episodes[0]]


def test_round_trip_frames_and_episode_boundaries(recording):
    root, indices, expected_episodes = recording
    assert indices == [0, 1]
    dataset = LeRobotDataset(repo_id="anything/rollouts", root=root)
    assert dataset.num_episodes == 2 and len(dataset) == 5 + 7
    assert tuple(dataset.features["observation.image"]["shape"]) == (H, W, 3)
    # one data file and one episodes-metadata file per episode: each closed (footer written) when it ended
    assert len(list((root / "data").glob("*/*.parquet"))) == len(list((root / "meta/episodes").glob("*/*.parquet"))) == 2
    position = 0
    for episode, expected in enumerate(expected_episodes):
        meta = dataset.meta.episodes[episode]
        assert (meta["dataset_from_index"], meta["dataset_to_index"]) == (position, position + len(expected))
        for frame_index, want in enumerate(expected):
            item = dataset[position]
            assert int(item["episode_index"]) == episode and int(item["frame_index"]) == frame_index
            assert item["task"] == "push the puck"
            np.testing.assert_array_equal(item["observation.state"].numpy(), want["state"])
            # images come back as LeRobot loads them: float [C, H, W] in [0, 1], exactly the uint8 pixels / 255
            torch.testing.assert_close(item["observation.image"],
                                       torch.from_numpy(want["pixels"].transpose(2, 0, 1)).float() / 255, rtol=0, atol=0)
            np.testing.assert_array_equal(item["action"].numpy(), want["action"])
            np.testing.assert_array_equal(item["steering.latent"].numpy(), want["latent"])
            # [1] features come back as LeRobot stores them: scalars
            assert item["steering.chunk_row"].dtype == torch.int64 and item["steering.chunk_row"].item() == want["row"]
            assert item["next.reward"].item() == want["reward"]
            assert item["next.done"].item() == want["done"] and item["next.success"].item() == want["done"]
            position += 1
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["data_files_size_in_mb"] == 100  # LeRobot's default is back after close


def test_recording_feeds_offline_chunk_transitions(recording):
    root, _, (terminated_episode, truncated_episode) = recording
    adapter = native_adapter()
    out = offline_chunk_transitions(root, n_action_steps=K, n_obs_steps=1, gamma=0.9, discount_mode="env_step",
                                    to_policy_batch=None, encode=adapter.encode, normalize_action=None,
                                    latent_dim=L, show_progress=False)
    # terminated episode (5 frames): every frame starts a chunk; truncated one (7 frames): t + 3 <= 6 -> 4 chunks
    assert out["reward"].shape == (5 + 4,)
    rewards = [f["reward"] for f in terminated_episode]
    expected = [sum(rewards[t:t + K]) for t in range(5)]
    rewards = [f["reward"] for f in truncated_episode]
    expected += [sum(rewards[t:t + K]) for t in range(4)]
    torch.testing.assert_close(out["reward"], torch.tensor(expected, dtype=torch.float32))
    assert out["terminated"].tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0]
    torch.testing.assert_close(out["discount"][:5], torch.tensor([0.9 ** 3, 0.9 ** 3, 0.9 ** 3, 0.9 ** 2, 0.9]))
    # the terminal chunk starting at frame 3 executes frames 3, 4 and repeats frame 4's action
    last = torch.from_numpy(terminated_episode[4]["action"])
    torch.testing.assert_close(out["action"][3].reshape(K, A)[1:], torch.stack([last, last]))


CRASH_SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    from vla_steer.data.recording import RolloutRecorder

    rec = RolloutRecorder(sys.argv[1], fps=10, action_dim=2, latent_dim=2, task="t",
                          observation_features={"observation.state": {"dtype": "float32", "shape": (3,)}})
    def frame(value, done=False):
        return {"observation.state": np.full(3, value, np.float32), "action": np.full(2, value, np.float32),
                "latent": np.zeros(2), "reward": value, "success": done, "done": done, "chunk_row": 0}
    for episode in range(2):
        rec.add_frames(0, [frame(10 * episode + i, done=i == 3) for i in range(4)])
        rec.end_episode(0)
    rec.add_frames(0, [frame(99.0)] * 3)  # an episode in progress
    rec.add_frames(1, [frame(98.0)] * 2)
    print("ready", flush=True)
    time.sleep(300)
""")


def test_kill_9_loses_only_episodes_in_progress_and_append_resumes(tmp_path):
    root = tmp_path / "crash"
    script = tmp_path / "record.py"
    script.write_text(CRASH_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, str(script), str(root)], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL

    dataset = LeRobotDataset(repo_id="x/crash", root=root)
    assert dataset.num_episodes == 2 and len(dataset) == 8
    states = torch.stack([dataset[i]["observation.state"][0] for i in range(8)])
    assert states.tolist() == [0, 1, 2, 3, 10, 11, 12, 13]

    spec = dict(fps=10, action_dim=2, latent_dim=2, task="t",
                observation_features={"observation.state": {"dtype": "float32", "shape": (3,)}})
    with pytest.raises(FileExistsError, match="append=True"):
        RolloutRecorder(root, **spec)
    with RolloutRecorder(root, append=True, **spec) as rec:
        rec.add_frames(3, [{"observation.state": np.full(3, 50.0), "action": np.zeros(2), "latent": np.zeros(2),
                            "reward": 1.0, "success": False, "done": False, "chunk_row": i} for i in range(2)])
        assert rec.end_episode(3) == 2
    dataset = LeRobotDataset(repo_id="x/crash", root=root)
    assert dataset.num_episodes == 3 and len(dataset) == 10
    assert [int(dataset[i]["index"]) for i in range(10)] == list(range(10))
    assert dataset[9]["observation.state"].tolist() == [50.0] * 3 and int(dataset[9]["episode_index"]) == 2
    with pytest.raises(ValueError, match="differs"):
        RolloutRecorder(root, append=True, **{**spec, "latent_dim": 3})


def test_interrupted_episode_write_is_detected(tmp_path):
    """A kill inside end_episode can leave a parquet file without its footer: append refuses it clearly."""
    root = tmp_path / "cut"
    with recorder(root) as rec:
        for _ in range(2):
            frames, _ = chunk(np.random.default_rng(1), done_at=2)
            rec.add_frames(0, frames)
            rec.end_episode(0)
    last = sorted((root / "data").glob("*/*.parquet"))[-1]
    last.write_bytes(last.read_bytes()[:-50])
    with pytest.raises(RuntimeError, match="interrupted"):
        recorder(root, append=True)


CUT_WRITE_SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    from vla_steer.data import recording
    rec = recording.RolloutRecorder(sys.argv[1], fps=10, action_dim=2, latent_dim=2, task="t",
                                    observation_features={"observation.state": {"dtype": "float32", "shape": (3,)}})
    frame = {"observation.state": np.zeros(3), "action": np.zeros(2), "latent": np.zeros(2), "reward": 0.0,
             "success": False, "done": False, "chunk_row": 0}
    for _ in range(int(sys.argv[2])):
        rec.add_frames(0, [frame] * 4)
        rec.end_episode(0)
    # the next episode write dies after LeRobot wrote its files and metadata, before the footers (as kill -9 would)
    rec.add_frames(0, [frame] * 5)
    recording._begin_episode_write(rec.root)
    for converted in rec._pending.pop(0):  # what end_episode does, minus the finalize
        rec.dataset.add_frame(dict(converted))
    rec.dataset.save_episode()
    os._exit(0)
""")


@pytest.mark.parametrize("finished", [2, 0], ids=["after-two-episodes", "first-episode"])
def test_an_episode_write_cut_short_is_rolled_back_and_recording_goes_on(tmp_path, finished):
    root, script = tmp_path / "cut", tmp_path / "cut.py"
    script.write_text(CUT_WRITE_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, str(script), str(root), str(finished)], env=env, check=True, timeout=300)
    assert (root / ".vla_steer_episode_journal").is_dir()
    spec = dict(fps=10, action_dim=2, latent_dim=2, task="t",
                observation_features={"observation.state": {"dtype": "float32", "shape": (3,)}})
    with RolloutRecorder(root, append=True, **spec) as rec:  # rolls the cut write back, then appends
        rec.add_frames(0, [{"observation.state": np.full(3, 7.0), "action": np.zeros(2), "latent": np.zeros(2),
                            "reward": 1.0, "success": False, "done": False, "chunk_row": 0}] * 3)
        assert rec.end_episode(0) == finished
    dataset = LeRobotDataset(repo_id="x/cut", root=root)
    assert dataset.num_episodes == finished + 1 and len(dataset) == 4 * finished + 3
    assert dataset[len(dataset) - 1]["observation.state"].tolist() == [7.0] * 3
    assert not (root / ".vla_steer_episode_journal").exists()


def test_a_recording_killed_before_its_first_episode_reopens(tmp_path):
    spec = dict(fps=10, action_dim=2, latent_dim=2, task="t",
                observation_features={"observation.state": {"dtype": "float32", "shape": (3,)}})
    RolloutRecorder(tmp_path / "empty", **spec).close()  # created, no episode: LeRobot alone cannot reopen this
    with RolloutRecorder(tmp_path / "empty", append=True, **spec) as rec:
        rec.add_frames(0, [{"observation.state": np.zeros(3), "action": np.zeros(2), "latent": np.zeros(2),
                            "reward": 0.0, "success": False, "done": False, "chunk_row": 0}] * 2)
        assert rec.end_episode(0) == 0
    assert LeRobotDataset(repo_id="x/empty", root=tmp_path / "empty").num_episodes == 1


def test_refusals_and_frame_validation(tmp_path, caplog):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a recording"):
        recorder(foreign)
    other = LeRobotDataset.create(repo_id="x/other", fps=10, root=tmp_path / "other", use_videos=False,
                                  features={"action": {"dtype": "float32", "shape": (A,), "names": None}})
    other.finalize()
    with pytest.raises(FileExistsError, match=RECORDER_MARKER):
        recorder(tmp_path / "other", append=True)

    empty = tmp_path / "empty"
    empty.mkdir()
    rec = recorder(empty)  # an existing empty directory is fine
    frames, _ = chunk(np.random.default_rng(2))
    with pytest.raises(KeyError, match="missing.*'reward'"):
        rec.add_frames(0, [{key: value for key, value in frames[0].items() if key != "reward"}])
    with pytest.raises(ValueError, match="observation.image"):
        rec.add_frames(0, [{**frames[0], "observation.image": np.zeros((3, W, H), np.float32)}])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        rec.add_frames(0, [{**frames[0], "observation.image": np.full((3, H, W), 255.0, np.float32)}])
    with pytest.raises(ValueError, match="action"):
        rec.add_frames(0, [{**frames[0], "action": np.zeros(A + 1)}])
    with pytest.raises(ValueError, match="follows a done"):
        rec.add_frames(0, [{**frames[0], "done": True}, frames[1]])
    assert rec.pending_frames == {}  # nothing of a refused call is kept
    rec.add_frames(0, [{**frames[0], "done": True}])
    with pytest.raises(ValueError, match="follows a done"):
        rec.add_frames(0, [frames[1]])
    assert rec.discard_episode(0) == 1
    rec.add_frames(0, frames)
    with caplog.at_level(logging.WARNING, logger="vla_steer.data.recording"):
        rec.close()
    assert "dropping 1 unfinished episode(s) (3 frames)" in caplog.text
    with pytest.raises(RuntimeError, match="closed"):
        rec.add_frames(0, frames)
    assert rec.num_episodes == 0
