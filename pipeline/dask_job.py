"""dask.distributed wiring of the corpus build: ``client.map(process_block, blocks)``.

By default a LocalCluster of ``workers`` single-threaded worker processes (GDAL and the
codecs are not all thread-safe, and one block per process keeps memory per worker
bounded); with ``scheduler`` the blocks go to an existing cluster, whose workers must
have terraloom installed and see the output directory.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any

from terraloom.pipeline.block import BuildJob, EngineResult, process_block, sum_counters
from terraloom.pipeline.build_layout import BuildInputError
from terraloom.pipeline.corpus_writer import BlockKey

#: Dask's nanny exports ``MALLOC_TRIM_THRESHOLD_=65536`` to its workers by default, and
#: writes it into this process's environment, where later worker processes (a Beam
#: build, a process pool) inherit it. A block allocates and frees many 0.1-10 MB arrays
#: per sample, which that threshold hands back to the OS and page-faults in again on
#: every free (measured: docs/bench.md, "Measured choices behind defaults"). glibc's
#: adaptive default is kept instead; the other pre-spawn variables (one OpenMP/BLAS
#: thread per single-threaded worker) stay.
NANNY_ENV_OVERRIDES = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


#: How long ``check_scheduler`` waits for a scheduler to answer before the build gives up.
SCHEDULER_CONNECT_TIMEOUT_S = 10.0


class DaskSetupError(BuildInputError):
    """The Dask engine cannot start here (unreachable scheduler, unguarded script): raised
    before the build writes anything; the CLI's exit 2."""


def check_scheduler(address: str, timeout_s: float = SCHEDULER_CONNECT_TIMEOUT_S) -> None:
    """Connect to a ``distributed`` scheduler once, so a wrong address fails in seconds
    with one line, before the build creates its output (not after dask's 30 s default)."""
    from distributed import Client

    try:
        client = Client(address, timeout=f"{timeout_s}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        why = " ".join(str(exc).split()) or type(exc).__name__
        raise DaskSetupError(
            f"cannot reach the dask scheduler at {address} within {timeout_s:g} s: {why}"
        ) from None
    client.close()


def _guarded_lines(source: str) -> list[tuple[int, int]]:
    """Line ranges of the ``if __name__ == "__main__":`` blocks of a module's source."""
    out = []
    for node in ast.parse(source).body:
        if not isinstance(node, ast.If):
            continue
        t = node.test
        if (
            isinstance(t, ast.Compare)
            and len(t.ops) == 1
            and isinstance(t.ops[0], ast.Eq)
            and {ast.unparse(t.left), ast.unparse(t.comparators[0])}
            in ({"__name__", "'__main__'"}, {"__name__", '"__main__"'})
        ):
            out.append((node.body[0].lineno, node.body[-1].end_lineno or node.body[-1].lineno))
    return out


def unguarded_main_call(frame: FrameType | None) -> str | None:
    """The ``file:line`` of the main script's top-level code this call comes from when
    that line is outside an ``if __name__ == "__main__":`` block, else None.

    Dask's local worker processes are spawned: each one imports the main script again,
    so an unguarded build there starts again in every worker (``Nanny failed to start``)
    after the driver has created its output. Interactive sessions and ``-c`` have no
    script file and are safe.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path:
        return None
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") == "__main__":
            break
        frame = frame.f_back
    if frame is None or os.path.abspath(frame.f_code.co_filename) != os.path.abspath(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            guarded = _guarded_lines(f.read())
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    line = frame.f_lineno
    if any(a <= line <= b for a, b in guarded):
        return None
    return f"{os.path.basename(path)}:{line}"


def check_local_cluster_safe(frame: FrameType | None) -> None:
    """Refuse (before anything is written) a local Dask build run from a script's
    unguarded top level; see :func:`unguarded_main_call`."""
    where = unguarded_main_call(frame)
    if where is not None:
        raise DaskSetupError(
            f"{where}: the dask engine starts worker processes that import your script again; "
            'put the build under `if __name__ == "__main__":` (or pass a --scheduler)'
        )


@contextlib.contextmanager
def _restored_environ() -> Iterator[None]:
    """Undo the nanny's writes to ``os.environ`` once the local cluster is closed."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def dask_client(
    workers: int = 1, scheduler: str | None = None, threads_per_worker: int = 1
) -> Iterator[Any]:
    """A ``distributed.Client``: of ``scheduler``, or of a LocalCluster of ``workers``
    processes (quiet, no dashboard, the nanny's malloc setting dropped), closed on exit
    and the driver's environment restored. The build and distributed planning use it."""
    import dask
    from distributed import Client, LocalCluster

    with _restored_environ(), dask.config.set(NANNY_ENV_OVERRIDES):
        cluster = None
        if scheduler is None:
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=threads_per_worker,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
            client = Client(cluster)
        else:
            client = Client(scheduler)
        try:
            yield client
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def run_dask(
    job: BuildJob,
    keys: Sequence[BlockKey],
    *,
    workers: int = 1,
    scheduler: str | None = None,
    retries: int = 1,
) -> EngineResult:
    """Run the blocks on Dask and wait; return the outcomes and counters.

    ``retries`` re-runs a block whose worker died; this is safe because a block is
    rewritten whole and committed last.
    """
    from distributed import as_completed

    with dask_client(workers, scheduler) as client:
        futures = client.map(
            process_block, [job] * len(keys), list(keys), pure=False, retries=retries
        )
        outcomes = [f.result() for f in as_completed(futures)]
        ran_with = len(client.scheduler_info().get("workers", {})) or workers
    outcomes.sort(key=lambda o: o.key)
    return EngineResult(outcomes, sum_counters(outcomes), ran_with)
