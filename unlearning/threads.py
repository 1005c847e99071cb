"""How many CPU threads torch uses: chosen once, at an entry point (the app, the CLI, a bench), never by the library.

Small models on a CPU are dominated by many small operations; two torch processes that each start one
thread per core on the same cores slow each other down by an order of magnitude (measured ~20x on a
2-core machine), far more than the 2x that sharing would cost. So:

1. the user's choice wins: ``--threads N`` where an entry point offers it, else ``UNLEARNING_THREADS``, else
   ``OMP_NUM_THREADS`` (torch reads it at start; it is re-applied here so the two never disagree);
2. otherwise torch's own default (one thread per physical core), capped at the cores this process may run
   on (``os.sched_getaffinity``), and split evenly between ``jobs`` processes when a bench runs several at once;
3. code that imports the package as a library is left alone: nothing below the entry points calls this,
   so a caller's own ``torch.set_num_threads`` stands.

Running two things at once (the app and a bench, two benches): give each its share, e.g.
``OMP_NUM_THREADS=1 python app.py`` and ``OMP_NUM_THREADS=1 python -m unlearning bench ...`` on 2 cores.
"""

from __future__ import annotations

import logging
import os

import torch

from .errors import InputError

log = logging.getLogger(__name__)

ENV_VARS = ("UNLEARNING_THREADS", "OMP_NUM_THREADS")  # read in this order; the first one set wins


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS / Windows
        return max(1, os.cpu_count() or 1)


def requested_threads(explicit: int | None = None) -> tuple[int | None, str]:
    """(threads, where the number came from) of the user's own choice, or (None, "") when they made none."""
    if explicit is not None:
        if explicit < 1:
            raise InputError(f"--threads must be at least 1, got {explicit}.")
        return explicit, "--threads"
    for name in ENV_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                n = int(value)
            except ValueError:
                raise InputError(f"{name} must be a whole number of threads, got '{value}'.") from None
            if n < 1:
                raise InputError(f"{name} must be at least 1, got {n}.")
            return n, name
    return None, ""


_TORCH_DEFAULT = torch.get_num_threads()  # before any entry point changed it


def threads_per_job(jobs: int = 1, explicit: int | None = None) -> int:
    """Threads for each of ``jobs`` processes running at once: the user's total (or the default) split evenly."""
    if jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {jobs}.")
    total, _ = requested_threads(explicit)
    return max(1, (total or min(_TORCH_DEFAULT, available_cores())) // jobs)


def configure_threads(jobs: int = 1, explicit: int | None = None) -> int:
    """Set torch's thread count for this process (one of ``jobs`` running at once) and return it.

    Entry points only. The total is written to ``UNLEARNING_THREADS`` so that a bench splitting it between
    worker processes (``threads_per_job``) splits the same number. Logs where the number came from, and
    warns when the processes would ask for more threads than there are cores.
    """
    n = threads_per_job(jobs, explicit)
    total, source = requested_threads(explicit)
    os.environ["UNLEARNING_THREADS"] = str(n * jobs)
    torch.set_num_threads(n)
    cores = available_cores()
    if n * jobs > cores:
        log.warning("%d process(es) x %d threads on %d cores: they will slow each other down; lower --jobs or the thread count.",
                    jobs, n, cores)
    log.info("torch threads: %d per process, %d process(es) (%s)", n, jobs, source or f"torch's default, {cores} cores available")
    return n


def worker_env(threads: int) -> dict[str, str]:
    """Environment for a child process that must use ``threads`` threads from its first torch import on."""
    return {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "UNLEARNING_THREADS")}
