"""What a user sees of a corpus build: the progress bar and the final summary table."""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from terraloom.pipeline.corpus_writer import PARTS_DIR
from terraloom.storage.location import Location

__all__ = ["BuildSummary", "MarkerProgress"]


@dataclass
class BuildSummary:
    """Per-split counts, counters and timing of one ``run_build`` call."""

    out: str
    engine: str
    workers: int
    planned: dict[str, int]
    accepted: dict[str, int]
    rejected: dict[str, dict[str, int]]
    blocks_total: int
    blocks_run: int
    blocks_skipped: int
    seconds: float
    counters: dict[str, int] = field(default_factory=dict)
    #: Per split, accepted samples without an optional modality: modality -> reason -> n.
    missing: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    #: Committed blocks that failed their check on this resume and were redone: (key, why).
    blocks_redone: list[tuple[str, str]] = field(default_factory=list)
    #: Why index/rejects were merged again although the build was finished ("" if not).
    tables_rewritten: str = ""

    @property
    def samples_processed(self) -> int:
        return int(
            self.counters.get("samples_accepted", 0) + self.counters.get("samples_rejected", 0)
        )

    @property
    def nothing_accepted(self) -> bool:
        """Every planned sample was rejected: a build that produced nothing (CLI exit 1)."""
        return sum(self.planned.values()) > 0 and not any(self.accepted.values())

    @property
    def samples_per_second(self) -> float:
        return self.samples_processed / self.seconds if self.seconds > 0 else 0.0

    def table(self) -> str:
        """The final summary table printed by the CLI."""
        lines = [f"{'split':<8}{'planned':>9}{'accepted':>10}{'rejected':>10}  rejected by reason"]
        for split in self.planned:
            rej = self.rejected.get(split, {})
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(rej.items())) or "-"
            lines.append(
                f"{split:<8}{self.planned[split]:>9}{self.accepted.get(split, 0):>10}{sum(rej.values()):>10}  {reasons}"
            )
        for split, by_modality in self.missing.items():
            for modality, reasons_m in by_modality.items():
                why = ", ".join(f"{k} {v}" for k, v in sorted(reasons_m.items()))
                lines.append(
                    f"{split}: {sum(reasons_m.values())} accepted samples without {modality} ({why})"
                )
        lines.append(
            f"blocks: {self.blocks_total} total, {self.blocks_run} written now, {self.blocks_skipped} already committed"
        )
        if self.blocks_redone:
            shown_redone = "; ".join(why for _, why in self.blocks_redone[:3])
            more = len(self.blocks_redone) - 3
            lines.append(
                f"redone: {len(self.blocks_redone)} committed blocks failed their check: {shown_redone}"
                + (f"; +{more} more" if more > 0 else "")
            )
        if self.tables_rewritten:
            lines.append(f"index/rejects merged again: {self.tables_rewritten}")
        if self.nothing_accepted:
            lines.append("no sample accepted: every planned sample was rejected (reasons above)")
        lines.append(
            f"engine: {self.engine} ({self.workers} worker{'s' if self.workers != 1 else ''}); {self.seconds:.1f} s; {self.samples_per_second:.2f} samples/s"
        )
        shown = {
            k: v for k, v in sorted(self.counters.items()) if k.startswith(("bytes_", "msec_"))
        }
        if shown:
            lines.append("counters: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
        return "\n".join(lines)


class MarkerProgress:
    """A tqdm bar fed by counting commit markers in the output: works with any runner,
    local disk or object store (one listing per split and tick), without any message
    passing."""

    def __init__(
        self,
        out: str | os.PathLike[str] | Location,
        total: int,
        done: int,
        enabled: bool = True,
        interval_s: float = 0.5,
    ) -> None:
        self.out = Location.parse(out)
        self.total = total
        self.start = done
        self.enabled = enabled
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Any = None

    def _count(self) -> int:
        parts = self.out / PARTS_DIR
        return sum(
            1
            for split in parts.listdir()
            for name in (parts / split).listdir()
            if name.startswith("block-") and name.endswith(".done")
        )

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._bar.n = self._count()
            self._bar.refresh()

    def __enter__(self) -> MarkerProgress:
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total, initial=self.start, unit="block", desc="build", file=sys.stderr
            )
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._bar.n = self._count()
            self._bar.close()
