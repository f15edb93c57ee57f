"""dask.distributed wiring of the corpus build: ``client.map(process_block, blocks)``.

By default a LocalCluster of ``workers`` single-threaded worker processes (GDAL and the
codecs are not all thread-safe, and one block per process keeps memory per worker
bounded); with ``scheduler`` the blocks go to an existing cluster, whose workers must
have terraloom installed and see the output directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence

from terraloom.pipeline.build import BuildJob, process_block, sum_counters
from terraloom.pipeline.corpus_writer import BlockKey, BlockOutcome

#: Dask's nanny exports ``MALLOC_TRIM_THRESHOLD_=65536`` to its workers by default, and
#: writes it into this process's environment, where later worker processes (a Beam
#: build, a process pool) inherit it. A block allocates and frees many 0.1-10 MB arrays
#: per sample; trimming at 64 KiB hands them back to the OS on every free and page-faults
#: them in again: measured 2x the CPU per sample on the ``bench`` world (5.7 vs 11.6
#: samples/s on 2 workers). glibc's adaptive default is kept instead; the other
#: pre-spawn variables (one OpenMP/BLAS thread per single-threaded worker) stay.
NANNY_ENV_OVERRIDES = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


@contextlib.contextmanager
def _restored_environ() -> Iterator[None]:
    """Undo the nanny's writes to ``os.environ`` once the local cluster is closed."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_dask(
    job: BuildJob,
    keys: Sequence[BlockKey],
    *,
    workers: int = 1,
    scheduler: str | None = None,
    retries: int = 1,
) -> tuple[list[BlockOutcome], dict[str, int]]:
    """Run the blocks on Dask and wait; return (outcomes, counters).

    ``retries`` re-runs a block whose worker died; this is safe because a block is
    rewritten whole and committed last.
    """
    import dask
    from distributed import Client, LocalCluster, as_completed

    with _restored_environ(), dask.config.set(NANNY_ENV_OVERRIDES):
        cluster = None
        if scheduler is None:
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
            client = Client(cluster)
        else:
            client = Client(scheduler)
        try:
            futures = client.map(
                process_block, [job] * len(keys), list(keys), pure=False, retries=retries
            )
            outcomes = [f.result() for f in as_completed(futures)]
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    outcomes.sort(key=lambda o: o.key)
    return outcomes, sum_counters(outcomes)
