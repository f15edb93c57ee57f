"""The training run's metrics file: ``metrics.csv`` (and TensorBoard when installed) of the
main process, one row per logged step, cut back on resume so a replayed step is not logged
twice.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any


class MetricsLog:
    """CSV (and optional TensorBoard) metrics of the main process."""

    def __init__(self, out_dir: Path, use_csv: bool, tensorboard: bool) -> None:
        self.path = out_dir / "metrics.csv" if use_csv else None
        self.fields: list[str] | None = None
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"))
            except ImportError:
                print("tensorboard is not installed; logging to CSV only")

    def truncate(self, step: int) -> None:
        """Drop the rows logged after ``step`` (a resume replays them), keeping the header;
        a run starting from scratch starts a new file."""
        if self.path is None or not self.path.exists():
            return
        if step <= 0:
            self.path.unlink()
            return
        with self.path.open(newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        kept = [rows[0], *(r for r in rows[1:] if _logged_step(r) <= step)]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            csv.writer(f).writerows(kept)
        tmp.replace(self.path)

    def write(self, row: dict[str, Any]) -> None:
        if self.path is not None:
            new = not self.path.exists()
            if self.fields is None:
                if not new:
                    with self.path.open() as f:
                        self.fields = next(csv.reader(f), None)
                if self.fields is None:
                    self.fields = list(row)
            with self.path.open("a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
                if new:
                    w.writeheader()
                w.writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "split") and isinstance(v, int | float) and math.isfinite(v):
                    self.tb.add_scalar(f"{row.get('split', 'train')}/{k}", v, row["step"])


def _logged_step(row: list[str]) -> float:
    """The step of a metrics.csv row; a row that has none sorts after every step."""
    try:
        return int(row[0])
    except (IndexError, ValueError):
        return math.inf
