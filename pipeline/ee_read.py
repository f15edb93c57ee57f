"""The build's reader of ``ee://`` hrefs: Earth Engine computes each sample's pixels.

A GDAL source is read window by window and warped onto the sample grids by the build
itself (``pipeline.sample``). An Earth Engine image has no file to open: the build asks
Earth Engine for the pixels of each sample on the sample's own 10 m UTM grid
(``ee.data.computePixels``), so the resampling happens server-side. What comes back is
already on the grid, in corpus values (:func:`schemas.modalities.ee_to_corpus`), and is
added to the same mosaic planes as any other source, so the quality rules, derived
modalities, index and rejects that follow do not know where the pixels came from.

``pipeline.sample`` dispatches a read group here when its hrefs are ``ee://``
(:func:`is_ee_group`); the samples, uses and failure callback are its own objects, used
through the few attributes below. A request that fails for good (after the retries of
``pipeline.ee_quota``) becomes an ``unreachable_asset`` reject carrying Earth
Engine's message.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from terraloom.pipeline.ee_quota import EeRequestConfig, EeRequestError
from terraloom.pipeline.hrefs import href_refusal
from terraloom.pipeline.sources.base import SourceError
from terraloom.pipeline.sources.earthengine import EeClient, live_client, pixel_grid, read_pixels
from terraloom.schemas.modalities import EARTH_ENGINE
from terraloom.schemas.tables import RejectReason

__all__ = ["EE_SCHEME", "ee_image_id", "is_ee_group", "read_ee_group"]

EE_SCHEME = "ee://"


class _Use(Protocol):
    sample: int
    modality: str
    band: str
    rank: int
    scene: dict[str, Any]
    asset: dict[str, Any]


class _Sample(Protocol):
    grid: Any
    lock: threading.Lock
    stats: Any
    failures: Any

    def plane(self, modality: str, band: str) -> Any: ...


Fail = Callable[[list[Any], Iterable[Any], RejectReason, str], None]


def ee_image_id(href: str) -> str:
    """``ee://COPERNICUS/S2_SR_HARMONIZED/<index>`` -> the Earth Engine image id."""
    return href[len(EE_SCHEME) :]


def is_ee_group(group: Mapping[str, Any]) -> bool:
    """Whether a read group (href -> uses) names Earth Engine images."""
    return bool(group) and all(h.startswith(EE_SCHEME) for h in group)


def read_ee_group(
    group: Mapping[str, list[Any]],
    samples: list[Any],
    config: Any,
    fail: Fail,
    *,
    client: EeClient | None = None,
) -> None:
    """Ask Earth Engine for every (sample, image) of a read group and add the answers to
    the samples' mosaic planes; failures go through ``fail`` as reasoned rejects.

    ``config`` is the build's (``href_policy`` and ``earthengine`` are read); requests of
    different samples run concurrently, bounded by ``earthengine.max_concurrent``.
    """
    ee_cfg: EeRequestConfig = getattr(config, "earthengine", None) or EeRequestConfig()
    jobs: list[tuple[str, int, list[Any]]] = []
    for href in sorted(group):
        uses = group[href]
        why = href_refusal(href, config.href_policy)
        if why is not None:
            fail(samples, uses, RejectReason.HREF_NOT_ALLOWED, why)
            continue
        collection = str(uses[0].scene.get("collection")) if uses else ""
        if collection not in EARTH_ENGINE:
            fail(
                samples,
                uses,
                RejectReason.UNREACHABLE_ASSET,
                f"{collection!r} has no Earth Engine convention in the registry",
            )
            continue
        per_sample: dict[int, list[Any]] = defaultdict(list)
        for u in uses:
            per_sample[u.sample].append(u)
        jobs.extend((href, i, us) for i, us in sorted(per_sample.items()))
    if not jobs:
        return
    if client is None:
        try:
            client = live_client(ee_cfg)
        except SourceError as exc:
            for _href, _, us in jobs:
                fail(samples, us, RejectReason.UNREACHABLE_ASSET, str(exc))
            return

    def run(job: tuple[str, int, list[Any]]) -> None:
        href, i, us = job
        s = samples[i]
        if us[0].modality in s.failures:
            return
        grid = s.grid
        conv = EARTH_ENGINE[str(us[0].scene.get("collection"))]
        stats: dict[str, float] = {}
        t0 = time.perf_counter()
        try:
            values = read_pixels(
                client,
                ee_image_id(href),
                conv,
                [u.band for u in us],
                [str(u.asset.get("key")) for u in us],
                pixel_grid(grid.epsg, tuple(grid.transform)[:6], grid.width, grid.height),
                ee_cfg,
                stats=stats,
            )
        except (EeRequestError, SourceError) as exc:
            fail(samples, us, RejectReason.UNREACHABLE_ASSET, f"Earth Engine: {exc}")
            return
        with s.lock:
            for u, layer in zip(us, values, strict=True):
                s.plane(u.modality, u.band).add(layer, u.rank)
            datums = getattr(s, "datums", None)
            if conv.vertical_datum is not None and datums is not None:
                datums[us[0].modality].add(conv.vertical_datum)
            s.stats["msec_read"] += (time.perf_counter() - t0) * 1e3
            s.stats["bytes_read"] += float(values.nbytes)
            s.stats["reads"] += stats.get("ee_requests", 0.0)
            s.stats["ee_requests"] += stats.get("ee_requests", 0.0)
            s.stats["ee_retries"] += stats.get("ee_retries", 0.0)

    n = min(ee_cfg.max_concurrent, len(jobs))
    if n <= 1:
        for job in jobs:
            run(job)
        return
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(run, jobs))
