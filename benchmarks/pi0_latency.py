"""Latency and memory of steering pi0 through its initial noise: ``vla_latency.py --policy pi0``.

    PYTHONPATH=.pi-overlay HF_HUB_OFFLINE=1 python benchmarks/pi0_latency.py --size tiny          # smoke run
    PYTHONPATH=.pi-overlay HF_HUB_OFFLINE=1 python benchmarks/pi0_latency.py --rounds 5 --dtype bfloat16

Kept for the commands that name it; every option is ``benchmarks/vla_latency.py``'s (see its ``--help``). Writes
``benchmarks/results/pi0_latency[_tiny]_<device type>.json`` unless ``--output`` says otherwise
(``benchmarks/results/pi0_latency.json`` is the earlier CPU run of this script, kept as it was).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vla_latency import main  # noqa: E402

if __name__ == "__main__":
    main(["--policy", "pi0", *sys.argv[1:]])
