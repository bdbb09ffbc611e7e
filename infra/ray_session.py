"""How every job joins or starts Ray, and leaves behind only what was there before it.

A job joins a cluster when it is told where one is (its ``address`` setting, or ``RAY_ADDRESS``, which
``ray job submit`` sets); otherwise it starts a private local Ray (``address="local"``), never one that
``/tmp/ray/ray_current_cluster`` names: a crashed ``ray start`` leaves that file behind, and joining a
dead or foreign cluster by accident is worse than starting a fresh one (``address="auto"`` joins a
running local cluster on purpose). A caller that already initialised Ray in its process (a notebook, a
test, ``jobs.demo`` running stages back to back) keeps it; a session this module started is shut down
when the job ends, so an in-process caller is not left holding a Ray whose processes someone else may
stop.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def ray_session(address: str | None, num_cpus: int | None = None, min_cpus: float = 0) -> Iterator:
    """Yields the ``ray`` module, initialised; shuts down on exit only what it started.

    address: a cluster to join (GCS ``host:port``, ``ray://...`` or ``"auto"``); None joins
        ``RAY_ADDRESS`` if set, else starts a local Ray.
    num_cpus: logical CPUs of a new local Ray; None gives 2 x the cores or ``min_cpus``, whichever is
        more: Ray Data, Train and Tune controllers need slots beside the workers, and on a small
        machine a pool of one actor per core must leave some.
    """
    import ray

    if ray.is_initialized():
        yield ray
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=True)
    else:
        cpus = num_cpus or max(2 * (os.cpu_count() or 1), math.ceil(min_cpus))
        # With the dashboard (when installed): its State API is what Ray Train's placement-group cleaner
        # polls, and without it that actor warns every few seconds.
        ray.init(address="local", num_cpus=cpus)
    try:
        yield ray
    finally:
        ray.shutdown()
