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

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from terraloom.pipeline.block import BuildJob, EngineResult, process_block
from terraloom.pipeline.corpus_writer import BlockKey, BlockOutcome


@contextlib.contextmanager
def _quiet_import() -> Iterator[None]:
    """Importing Beam logs "apitools not found" on the root logger (and, through
    ``logging.warning``, configures root logging for the whole process): drop it."""
    root = logging.getLogger()
    spare = logging.NullHandler() if not root.handlers else None
    if spare is not None:
        root.addHandler(spare)

    def keep(record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()

    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)
        if spare is not None:
            root.removeHandler(spare)


with _quiet_import():
    import apache_beam as beam
    from apache_beam.metrics import Metrics
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions

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


#: Runner options that set a runner's parallelism, in the order they are looked for.
PARALLELISM_FLAGS = ("--direct_num_workers", "--num_workers", "--parallelism")


def options_workers(args: Sequence[str], default: int = 1) -> int:
    """The parallelism the pipeline options ask for (what the summary reports)."""
    for flag in PARALLELISM_FLAGS:
        for a in args:
            if a.startswith(flag + "="):
                try:
                    return max(1, int(a.split("=", 1)[1]))
                except ValueError:
                    return default
    return default


#: Loggers of Beam's own start-up chatter (the missing GCP client, the DirectRunner's
#: worker relay, options it does not parse): quiet unless the build is verbose.
QUIET_LOGGERS = ("apache_beam",)


@contextlib.contextmanager
def quiet_beam_logs(verbose: bool) -> Iterator[None]:
    """Raise Beam's loggers to ERROR for the run (``verbose``: leave them alone)."""
    if verbose:
        yield
        return
    loggers = [logging.getLogger(n) for n in QUIET_LOGGERS]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, saved):
            lg.setLevel(level)


def beam_args(
    runner: str | None = None,
    workers: int = 1,
    pipeline_args: Sequence[str] = (),
    verbose: bool = False,
) -> list[str]:
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
            args.append(f"--default_sdk_harness_log_level={'WARNING' if verbose else 'ERROR'}")
    elif chosen == "DataflowRunner" and not _has(args, "--num_workers"):
        args.append(f"--num_workers={workers}")
    elif chosen in ("FlinkRunner", "PortableRunner") and not _has(args, "--parallelism"):
        args.append(f"--parallelism={workers}")
    return args


def beam_options(
    runner: str | None = None,
    workers: int = 1,
    pipeline_args: Sequence[str] = (),
    verbose: bool = False,
) -> PipelineOptions:
    """:func:`beam_args` as Beam's ``PipelineOptions``."""
    return PipelineOptions(beam_args(runner, workers, pipeline_args, verbose))


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
    verbose: bool = False,
) -> EngineResult:
    """Run the blocks on a Beam runner and wait; return the counters (no outcomes).

    Outcomes stay on the workers (a remote runner cannot hand them back cheaply); the
    driver reads what it needs from the commit markers.
    """
    args = beam_args(runner, workers, pipeline_args, verbose)
    options = PipelineOptions(args)
    with quiet_beam_logs(verbose):
        p = beam.Pipeline(options=options)
        _ = p | "BuildCorpus" >> BuildCorpus(job, tuple(keys))
        result = p.run()
        result.wait_until_finish()
    return EngineResult([], query_counters(result), options_workers(args, workers))
