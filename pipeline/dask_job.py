"""dask.distributed wiring of the corpus build: ``client.map(process_block, blocks)``.

By default a LocalCluster of ``workers`` single-threaded worker processes (GDAL and the
codecs are not all thread-safe, and one block per process keeps memory per worker
bounded); with ``scheduler`` the blocks go to an existing cluster, whose workers must
have terraloom installed and see the output directory.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pipeline.build import BuildJob, process_block, sum_counters
from pipeline.corpus_writer import BlockKey, BlockOutcome


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
    from distributed import Client, LocalCluster, as_completed

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
