"""A training run directory on any location: written locally, published by commit.

Training appends to ``metrics.csv``, writes checkpoints with ``safetensors``/``torch.save``
and points ``latest`` at the newest: all local-file operations. For a run directory on an
object store (``s3://bkt/run``) the trainer works in a local *stage* (the run's folder in
the local cache, ``storage.transfer.cache_dir``) and this module publishes it:

* :meth:`RunDir.pull` (start of a run): the remote ``config.yaml``, ``metrics.csv``,
  ``latest`` and the checkpoint it names are copied into a fresh stage, so a run resumes
  on any machine from what the bucket holds;
* :meth:`RunDir.push_checkpoint` (after each checkpoint): the checkpoint's files, the
  train state last, then ``metrics.csv`` and ``config.yaml`` (small: rewritten whole, an
  object store has no append), then ``latest`` - the commit: a reader follows ``latest``
  only to a checkpoint whose files are all there; then checkpoints beyond ``keep`` are
  deleted remotely, oldest first, never the one ``latest`` names;
* :meth:`RunDir.push_metrics` (after each logged row): ``metrics.csv`` rewritten.

A run killed between two pushes resumes from the last published checkpoint, exactly as a
local run killed mid-write resumes from the previous one. Local run directories are used
in place: every method is a no-op for them.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from terraloom.storage.location import Location, LocationError
from terraloom.storage.transfer import cache_dir, download_file, upload_tree

__all__ = ["RunDir"]

#: Files of a checkpoint folder, in upload order: the train state last (``latest_checkpoint``
#: trusts a checkpoint only when its train state exists).
CHECKPOINT_FILES = ("model.safetensors", "config.json", "train_state.pt")
RUN_FILES = ("metrics.csv", "config.yaml")
LATEST = "latest"
_STEP_NAME = re.compile(r"step_\d{8,}")


@dataclass(frozen=True)
class RunDir:
    """Where a run lives (``location``) and where the trainer writes it (``local``)."""

    location: Location
    local: Path

    @classmethod
    def open(
        cls,
        where: str | os.PathLike[str] | Location,
        storage_options: Mapping[str, Any] | None = None,
    ) -> RunDir:
        """Parse the run location (one-line :class:`LocationError` when malformed or
        read-only); the stage of a remote run is its folder in the local cache."""
        loc = Location.parse(where, storage_options)
        if loc.read_only:
            raise LocationError(f"{loc} is read-only ({loc.scheme}://): a run directory is written")
        if loc.is_local:
            return cls(loc, loc.local_path)
        return cls(loc, cache_dir(loc, "runs"))

    @property
    def remote(self) -> bool:
        return not self.location.is_local

    def __str__(self) -> str:
        return str(self.location)

    # ---- start -----------------------------------------------------------------------
    def remote_latest(self) -> str | None:
        """The checkpoint name ``latest`` holds remotely (checked: a bare ``step_<n>``)."""
        marker = self.location / LATEST
        if not marker.exists():
            return None
        name = marker.read_text().strip()
        if not _STEP_NAME.fullmatch(name):
            raise LocationError(
                f"{marker} names {name[:80]!r}, not a step_<n> checkpoint of this run; refusing to follow it"
            )
        return name

    def pull(self, resume: bool = True) -> None:
        """A fresh stage holding what the remote run holds (config, metrics, latest
        checkpoint): the stage never keeps anything the bucket does not. Without
        ``resume`` the stage starts empty."""
        if not self.remote:
            return
        if self.local.exists():
            shutil.rmtree(self.local)
        self.local.mkdir(parents=True)
        if not resume:
            return
        for name in RUN_FILES:
            src = self.location / name
            if src.exists():
                download_file(src, self.local / name)
        latest = self.remote_latest()
        if latest is None:
            return
        ckpt = self.location / latest
        if not (ckpt / CHECKPOINT_FILES[-1]).exists():
            return  # latest names a checkpoint that was never completed: start over
        for name in CHECKPOINT_FILES:
            download_file(ckpt / name, self.local / latest / name)
        (self.local / LATEST).write_text(latest)

    # ---- during and after ----------------------------------------------------------------
    def push_files(self, *names: str) -> None:
        """Rewrite small run files (``metrics.csv``, ``config.yaml``) remotely, whole: an
        object store has no append, and these stay small."""
        if self.remote:
            upload_tree(self.local, self.location, [n for n in names if (self.local / n).exists()])

    def push_checkpoint(self, ckpt: Path, keep: int) -> None:
        """Publish one checkpoint folder of the stage, then commit it by ``latest``."""
        if not self.remote:
            return
        name = ckpt.name
        upload_tree(self.local, self.location, [f"{name}/{f}" for f in CHECKPOINT_FILES])
        self.push_files(*RUN_FILES)
        (self.location / LATEST).write_text(name)
        if keep > 0:
            steps = sorted(n for n in self.location.listdir() if _STEP_NAME.fullmatch(n))
            for old in steps[:-keep]:
                if old != name:
                    (self.location / old).delete(recursive=True)
