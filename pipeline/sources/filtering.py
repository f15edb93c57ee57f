"""Local filtering of items (static catalogs, caches, recorded responses): the STAC API
``query`` extension, time ranges and footprints evaluated in process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from shapely.geometry.base import BaseGeometry
from shapely.prepared import prep

from terraloom.pipeline.sources.items import SourceError, SourceItem, TimeRange

_QUERY_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "neq": lambda a, b: a != b,
    "lt": lambda a, b: a is not None and a < b,
    "lte": lambda a, b: a is not None and a <= b,
    "gt": lambda a, b: a is not None and a > b,
    "gte": lambda a, b: a is not None and a >= b,
    "in": lambda a, b: a in b,
    "startsWith": lambda a, b: isinstance(a, str) and a.startswith(b),
}


def matches_query(props: Mapping[str, Any], query: Mapping[str, Any] | None) -> bool:
    """Evaluate the STAC API ``query`` extension on an item's properties."""
    if not query:
        return True
    for name, cond in query.items():
        value = props.get(name)
        if not isinstance(cond, Mapping):
            cond = {"eq": cond}
        for op, arg in cond.items():
            fn = _QUERY_OPS.get(op)
            if fn is None:
                raise SourceError(f"unsupported query operator {op!r} (have {sorted(_QUERY_OPS)})")
            try:
                if not fn(value, arg):
                    return False
            except TypeError:
                return False
    return True


def in_time_range(item: SourceItem, time_range: TimeRange | None) -> bool:
    """An item's [start, end] (or instant) overlaps the range (inclusive)."""
    if time_range is None:
        return True
    t0, t1 = time_range
    start = item.start_datetime or item.datetime
    end = item.end_datetime or item.datetime
    return start <= t1 and end >= t0


def filter_items(
    items: Sequence[SourceItem],
    geometry: BaseGeometry,
    time_range: TimeRange | None,
) -> list[SourceItem]:
    prepared = prep(geometry)
    return [
        it for it in items if in_time_range(it, time_range) and prepared.intersects(it.geometry)
    ]
