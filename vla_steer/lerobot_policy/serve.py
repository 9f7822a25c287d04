"""LeRobot's async inference policy server, able to serve ``steered`` policies.

LeRobot 0.4.4's ``lerobot.async_inference.policy_server`` refuses any policy type missing from the hard-coded
``lerobot.async_inference.constants.SUPPORTED_POLICIES`` and, unlike ``lerobot-eval``, runs no plugin discovery.
:func:`enable_steered_policies` fixes both in the current process (the server module reads that same list
object); :func:`serve` then runs LeRobot's own server unchanged, with LeRobot's own arguments::

    vla-steer serve --host=127.0.0.1 --port=8080 --fps=30

A robot client then asks for ``policy_type="steered"`` and ``pretrained_name_or_path=<steered dir>``. Needs
LeRobot's ``async`` extra (grpcio). LeRobot's transport pickles observations and actions; serve only on a network
you trust.
"""

from __future__ import annotations

import sys

STEERED = "steered"


def enable_steered_policies() -> None:
    """Register the ``steered`` policy type with LeRobot and let its async policy server accept it."""
    import vla_steer.lerobot_policy  # noqa: F401  registers SteeredConfig as policy type "steered"
    from lerobot.async_inference import constants

    if STEERED not in constants.SUPPORTED_POLICIES:
        constants.SUPPORTED_POLICIES.append(STEERED)


def serve(argv: list[str] | None = None) -> None:
    """Run ``lerobot.async_inference.policy_server.serve`` with ``argv`` (its own draccus arguments)."""
    try:
        from lerobot.async_inference.policy_server import serve as lerobot_serve
    except ImportError as exc:
        raise ImportError(f"the async inference server needs LeRobot's async extra ({exc}): "
                          "pip install 'lerobot[async]==0.4.4'") from exc
    enable_steered_policies()
    sys.argv = ["vla-steer serve", *(argv or [])]  # draccus parses sys.argv
    lerobot_serve()
