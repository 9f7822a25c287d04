"""Hostile head files, as a table: each is refused with an exception naming the file or field and the fix, and the
worst small config is refused fast and without memory."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from vla_steer.hub.format import HeadFormatError, parse_json
from vla_steer.hub.schema import expected_tensor_shapes

GOOD = {"algorithm": "lpds", "head": {"hidden_dim": 8, "num_layers": 1}, "noise_shape": [4, 4],
        "latent_shape": [4, 4], "feature_dim": 8}


def _config(**changes):
    config = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if key.startswith("head_"):
            config["head"][key[5:]] = value
        else:
            config[key] = value
    return config


HOSTILE_CONFIGS = [
    ("layers-100000", _config(head_num_layers=100_000, head_hidden_dim=1), r"head.num_layers=100000 must be >= 1 and <= 64"),
    ("layers-1e6", _config(head_num_layers=10**6), r"head.num_layers=1000000 must be >= 1 and <= 64"),
    ("hidden-1e12", _config(head_hidden_dim=10**12), r"head.hidden_dim=1000000000000 must be >= 1 and <= 65536"),
    ("noise-1e9", _config(noise_shape=[10**9, 10**9], latent_shape=[10**9, 10**9]), r"'noise_shape' .* over the format's limit"),
    ("feature-1e12", _config(feature_dim=10**12), r"'feature_dim' must be an integer in 1\.\.1048576"),
    ("critics-1000", _config(head_num_critics=1000, critic="latent"), r"head.num_critics=1000 must be >= 1 and <= 16"),
    ("all-at-their-maximum", _config(head_hidden_dim=65536, head_num_layers=64, head_num_critics=16, critic="latent",
                                     feature_dim=1 << 20, noise_shape=[1024, 1024], latent_shape=[1024, 1024]),
     r"parameters; the format allows at most"),
    ("bound-inf", _config(head_bound=float("inf")), r"head.bound=inf must be a finite number"),
    ("layers-negative", _config(head_num_layers=-1), r"head.num_layers=-1 must be >= 1"),
]


@pytest.mark.parametrize("config, message", [c[1:] for c in HOSTILE_CONFIGS], ids=[c[0] for c in HOSTILE_CONFIGS])
def test_hostile_head_configs_are_refused_naming_the_field(config, message):
    with pytest.raises(HeadFormatError, match=message):
        expected_tensor_shapes(config)


@pytest.mark.parametrize("depth", [500, 980, 100_000])
def test_deeply_nested_json_is_refused_not_a_recursion_error(depth):
    with pytest.raises(HeadFormatError, match=r"head_config.json nests lists / objects more than 32 deep"):
        parse_json(("[" * depth + "]" * depth).encode(), "head_config.json")
    with pytest.raises(HeadFormatError, match=r"nests .* more than 32 deep"):
        parse_json(('{"a":' * depth + "1" + "}" * depth).encode(), "head_config.json")


def test_the_worst_10_kb_configs_are_refused_in_under_a_second_and_100_mb(tmp_path):
    """Every hostile config above, padded to 10 KB, read and checked in a fresh process: its time and the growth of
    its peak memory (ru_maxrss) are measured after the imports."""
    configs = [c[1] for c in HOSTILE_CONFIGS]
    for i, config in enumerate(configs):
        text = json.dumps({**config, "env": "x" * (10_000 - len(json.dumps(config)) - 12)})
        assert 9_000 < len(text) <= 10_240
        (tmp_path / f"{i}.json").write_text(text)
    script = textwrap.dedent(f"""
        import json, resource, sys, time
        from pathlib import Path
        from vla_steer.hub.format import HeadFormatError, read_json
        from vla_steer.hub.schema import expected_tensor_shapes
        from vla_steer.lerobot_policy.head import ActingHead
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        worst = 0.0
        for path in sorted(Path({str(tmp_path)!r}).glob("*.json")):
            for build in (expected_tensor_shapes, ActingHead):
                start = time.perf_counter()
                try:
                    build(read_json(path))
                except HeadFormatError:
                    pass
                else:
                    sys.exit(f"{{path}} was accepted")
                worst = max(worst, time.perf_counter() - start)
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(json.dumps({{"worst_s": worst, "peak_growth_mb": grown}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["worst_s"] < 1.0, measured
    assert measured["peak_growth_mb"] < 100, measured
