"""Assembling one block: the SampleResults of a block's plan rows -> fill-initialised arrays,
index rows and reject rows, ready for :func:`~terraloom.pipeline.corpus_writer.write_block`.

Pure (no I/O): every planned row ends up accepted or rejected, and a result that breaks the
build contract becomes an ``internal_error`` reject with the reason.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from terraloom.pipeline.checksums import canonicalize_nans, checksum, concat_checksum, row_crcs
from terraloom.pipeline.corpus_writer import BlockKey, block_rows
from terraloom.schemas.layouts import ArraySpec, StoreLayout, np_dtype
from terraloom.schemas.tables import RejectReason


@dataclass
class AssembledBlock:
    """A block ready to write: one array per store array, plus its table rows."""

    key: BlockKey
    start: int
    stop: int
    arrays: dict[str, np.ndarray]
    index_rows: list[dict[str, Any]]
    reject_rows: list[dict[str, Any]]
    stats: dict[str, float]
    #: Per array, the checksum of the whole block (its rows' CRCs combined: the commit
    #: marker's, without hashing the block a second time); arrays absent here are hashed
    #: by the writer.
    checksums: dict[str, str] = field(default_factory=dict)


def _internal_reject(
    plan_row: Mapping[str, Any], message: str, modality: str | None = None
) -> dict[str, Any]:
    return {
        "sample_id": plan_row["sample_id"],
        "split": plan_row["split"],
        "row": int(plan_row["row"]),
        "cell_id": plan_row["cell_id"],
        "geometry": plan_row["geometry"],
        "reason": RejectReason.INTERNAL_ERROR.value,
        "modality": modality,
        "message": message,
    }


def _check_value(spec: ArraySpec, value: Any) -> np.ndarray:
    x = np.asarray(value)
    want = spec.shape[1:]
    if x.shape != want:
        raise ValueError(f"array {spec.name!r} has shape {x.shape}, the layout wants {want}")
    dt = np_dtype(spec.dtype)
    if x.dtype != dt:
        if not np.can_cast(x.dtype, dt, casting="same_kind"):
            raise ValueError(f"array {spec.name!r} has dtype {x.dtype}, the layout wants {dt}")
        x = x.astype(dt)
    return x


def assemble_block(
    layout: StoreLayout,
    key: BlockKey,
    plan_rows: Sequence[Mapping[str, Any]],
    results: Sequence[Any],
) -> AssembledBlock:
    """Put one block's SampleResults into fill-initialised arrays and table rows.

    Every planned row ends up accepted (arrays + index row, ``valid`` True) or rejected
    (fill values + reject row). A sample result that breaks the build contract (wrong
    shape or dtype, missing array, no result at all) becomes an ``internal_error`` reject
    with the reason, so nothing is silently lost; results for rows outside the block or
    twice for one row mean ``build_block`` mixed blocks up, and raise ``ValueError``.
    """
    n = int(layout.attrs["n_samples"])
    s = int(layout.attrs["shard_samples"])
    a, b = block_rows(key, n, s)
    arrays = {
        spec.name: np.full((b - a, *spec.shape[1:]), spec.fill_value, dtype=np_dtype(spec.dtype))
        for spec in layout.arrays
    }
    planned = {int(r["row"]): r for r in plan_rows}
    if sorted(planned) != list(range(a, b)):
        raise ValueError(
            f"plan rows of {key} are {sorted(planned)[:5]}..., expected rows {a}..{b - 1}"
        )
    if "sample_id" in arrays:  # every planned row keeps its id, accepted or not
        arrays["sample_id"][:] = [str(planned[row]["sample_id"]) for row in range(a, b)]
    seen: dict[int, Any] = {}
    stats: dict[str, float] = defaultdict(float)
    index_rows: list[dict[str, Any]] = []
    reject_rows: list[dict[str, Any]] = []
    extras: list[dict[str, Any]] = []  # internal rejects for contract breaks
    accepted: list[tuple[int, dict[str, Any]]] = []
    for r in results:
        for name, v in (getattr(r, "stats", None) or {}).items():
            stats[name] += float(v)
        row = int(r.row)
        if row not in planned or r.split != key.split:
            raise ValueError(
                f"build_block returned row {r.split}/{row}, which is not in block {key}"
            )
        if row in seen:
            raise ValueError(f"build_block returned row {row} of {key} twice")
        seen[row] = r
    for row in range(a, b):
        r = seen.get(row)
        i = row - a
        if r is None:
            extras.append(
                _internal_reject(
                    planned[row], "build_block returned no result for this planned row"
                )
            )
            continue
        if r.reject is not None or r.arrays is None or r.index_row is None:
            if r.reject is None:
                extras.append(
                    _internal_reject(
                        planned[row], "build_block returned neither arrays+index_row nor a reject"
                    )
                )
            else:
                reject_rows.append(dict(r.reject))
            continue
        values: dict[str, np.ndarray] = {}
        try:
            for spec in layout.arrays:
                if spec.name in ("valid", "sample_id"):
                    continue
                if spec.name not in r.arrays:
                    raise ValueError(f"array {spec.name!r} missing from the result")
                values[spec.name] = _check_value(spec, r.arrays[spec.name])
        except ValueError as exc:
            extras.append(_internal_reject(planned[row], f"build contract broken: {exc}"))
            continue
        for name, v in values.items():
            arrays[name][i] = v
        arrays["valid"][i] = True
        accepted.append((i, dict(r.index_row)))
    for x in arrays.values():
        canonicalize_nans(x)
    # each row hashed once: for its index row and, combined, for the block's marker
    sums: dict[str, list[str]] = {}
    block_sums: dict[str, str] = {}
    for name, x in arrays.items():
        if x.dtype.kind in "OTU":  # strings: rows of different lengths, and small
            sums[name] = [checksum(x[i]) for i, _ in accepted]
            block_sums[name] = checksum(x)
            continue
        crcs = row_crcs(x)
        sums[name] = [f"{crcs[i]:08x}" for i, _ in accepted]
        block_sums[name] = concat_checksum(crcs, x[0].nbytes if len(x) else 0)
    for j, (_, index_row) in enumerate(accepted):
        index_row["checksums"] = {name: sums[name][j] for name in arrays}
        index_rows.append(index_row)
    reject_rows.extend(extras)
    return AssembledBlock(key, a, b, arrays, index_rows, reject_rows, dict(stats), block_sums)
