"""Apache Beam wiring of the corpus build: transforms only wire :func:`process_block`.

``BuildCorpus`` is ``Create(block keys) -> Reshuffle -> ParDo(ProcessBlock)``. The
reshuffle breaks fusion with ``Create`` so a distributed runner spreads blocks over its
workers. Counters (namespace ``terraloom``): ``samples_accepted``,
``samples_rejected_<reason>``, ``missing_<modality>_<reason>`` (accepted samples without an
optional modality), ``blocks_written``/``blocks_skipped``, ``bytes_read``,
``bytes_written`` and ``msec_<stage>`` for every stage ``build_block`` and the writer time.

Locally the DirectRunner runs in-process (``--workers 1``) or with
``--direct_running_mode=multi_processing --direct_num_workers=N``; the Prism runner
downloads a binary at run time, so it is never chosen implicitly. Any other runner
(FlinkRunner, SparkRunner, DataflowRunner) is selected with ``--runner`` and configured
with ordinary Beam pipeline options passed through untouched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from terraloom.pipeline.build import BuildJob, process_block
from terraloom.pipeline.corpus_writer import BlockKey, BlockOutcome

NAMESPACE = "terraloom"
DIRECT_RUNNERS = ("DirectRunner", "direct", "SwitchingDirectRunner")


class ProcessBlockFn(beam.DoFn):  # type: ignore[misc]
    """Build, write and commit one block; report its counters."""

    def __init__(self, job: BuildJob) -> None:
        super().__init__()
        self.job = job

    def process(self, key: BlockKey) -> Iterator[BlockOutcome]:
        outcome = process_block(self.job, key)
        for name, value in outcome.counters().items():
            Metrics.counter(NAMESPACE, name).inc(value)  # zeros too: "0 accepted" is news
        yield outcome


@dataclass
class BuildCorpus(beam.PTransform):  # type: ignore[misc]
    """Process every given block of a prepared build; outputs one BlockOutcome per block."""

    job: BuildJob
    keys: tuple[BlockKey, ...]

    def __post_init__(self) -> None:
        super().__init__()

    def expand(self, pbegin: Any) -> Any:
        return (
            pbegin
            | "CreateBlockKeys" >> beam.Create(list(self.keys))
            | "Reshuffle" >> beam.Reshuffle()
            | "ProcessBlock" >> beam.ParDo(ProcessBlockFn(self.job))
        )


def _has(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def beam_options(
    runner: str | None = None, workers: int = 1, pipeline_args: Sequence[str] = ()
) -> PipelineOptions:
    """Pipeline options: the user's pass-through args plus runner and parallelism defaults.

    Explicit args always win; ``workers`` only fills in the runner's own parallelism
    flag when the user did not set it.
    """
    args = list(pipeline_args)
    if not _has(args, "--runner"):
        args.append(f"--runner={runner or 'DirectRunner'}")
    elif runner is not None:
        raise ValueError(
            "give the runner either as --runner or inside the pipeline options, not both"
        )
    chosen = next(a.split("=", 1)[1] for a in args if a.startswith("--runner="))
    if chosen in DIRECT_RUNNERS:
        if not _has(args, "--direct_num_workers"):
            args.append(f"--direct_num_workers={workers}")
        if not _has(args, "--direct_running_mode"):
            args.append(
                f"--direct_running_mode={'multi_processing' if workers > 1 else 'in_memory'}"
            )
        if not _has(args, "--default_sdk_harness_log_level"):
            args.append("--default_sdk_harness_log_level=WARNING")
    elif chosen == "DataflowRunner" and not _has(args, "--num_workers"):
        args.append(f"--num_workers={workers}")
    elif chosen in ("FlinkRunner", "PortableRunner") and not _has(args, "--parallelism"):
        args.append(f"--parallelism={workers}")
    return PipelineOptions(args)


def query_counters(result: Any) -> dict[str, int]:
    """Counters of a finished pipeline (committed values where the runner has them)."""
    found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    out: dict[str, int] = {}
    for m in found:
        value = m.committed if m.committed is not None else m.attempted
        out[m.key.metric.name] = out.get(m.key.metric.name, 0) + int(value or 0)
    return dict(sorted(out.items()))


def run_beam(
    job: BuildJob,
    keys: Sequence[BlockKey],
    *,
    runner: str | None = None,
    workers: int = 1,
    pipeline_args: Sequence[str] = (),
) -> tuple[list[BlockOutcome], dict[str, int]]:
    """Run the blocks on a Beam runner and wait; return ([], counters).

    Outcomes stay on the workers (a remote runner cannot hand them back cheaply); the
    driver reads what it needs from the commit markers.
    """
    options = beam_options(runner, workers, pipeline_args)
    p = beam.Pipeline(options=options)
    _ = p | "BuildCorpus" >> BuildCorpus(job, tuple(keys))
    result = p.run()
    result.wait_until_finish()
    return [], query_counters(result)
