"""Turn the plan rows of one shard block into corpus samples (or rejects), scene-major.

:func:`build_block` is the one function both engines (Beam, Dask) call per block. It
never raises for a bad sample; every planned row yields exactly one
:class:`SampleResult`, accepted (arrays + index row) or rejected (reason + message).

Why scene-major: the rows of a block are spatially adjacent, so many samples need the
same source files. Instead of opening and decoding every COG once per sample (what a
per-sample ``odc.stac.load`` does), the block is processed source by source: the bands of
one item that share a pixel grid form a group; the sample footprints that need it are
projected into its pixel space and merged into a few windows
(:func:`pipeline.coregister.cluster_windows`); each window of each band is read and
decoded once, kept in memory, and all bands are warped together onto every member
sample's 10 m grid through one coordinate field per sample (shared with other items on
the same grid). Mosaics across items are accumulated order-independently (complete
values from the best-ranked scene in plan order; partial kernels at seams merged in plan
order), so the output bytes do not depend on read order and memory per block is about one
float32 plane per (sample, band), bounded by the shard size.

What happens to a sample once its planes are mosaicked lives with the idea it belongs
to: the quality rules in ``pipeline.quality``, the derived modalities (chosen from the
registry) in ``pipeline.derive``, the caption in ``pipeline.caption``, the arrays and
index/rejects rows in ``pipeline.sample_output``, the config in ``pipeline.build_config``.
This module keeps the scene-major reading and mosaicking of a block, which is one idea
(shared windows, shared coordinate fields, order-independent mosaics) and the reason it
is longer than the others.

Stored values: Sentinel-2 DN exactly as in the source (the registry's normalisation
statistics assume DN); S1 backscatter in dB (resampled as linear power); DEM metres;
LULC legend values; NDVI from reflectance (DN x scale + offset).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from rasterio.enums import Resampling as GdalResampling

from terraloom.pipeline.build_config import DEFAULT_REQUIRED, BuildConfig
from terraloom.pipeline.caption import Captioner, caption_sample, caption_time
from terraloom.pipeline.coregister import (
    PointSampler,
    SeparableSampler,
    TargetGrid,
    cluster_windows,
    modality_resampling,
    point_sampler,
    power_to_db,
    source_window,
    target_decimation,
    to_linear_power,
    warp_to_grid,
)
from terraloom.pipeline.derive import (
    CLOUD_MASK_NODATA,
    DeriveInputs,
    derive,
    sample_cloud,
    underivable,
    unsourced,
)
from terraloom.pipeline.ee_read import is_ee_group, read_ee_group
from terraloom.pipeline.quality import (
    Issue,
    check_cloud,
    check_s1_s2_delta,
    fill_small_gaps,
    judge_image,
    nodata_fraction,
)
from terraloom.pipeline.readers import (
    Asset,
    AssetError,
    AssetInfo,
    RasterWindow,
    check_georeferencing,
    gdal_env,
    open_asset,
    resolve_band,
)
from terraloom.pipeline.sample_output import (
    corpus_arrays,
    index_row,
    plan_reason,
    reject_row,
    unplanned,
)
from terraloom.pipeline.vertical import VerticalDatumError, height_shift, source_datum
from terraloom.schemas.modalities import (
    S2_CONVENTION,
    SAMPLE_PX,
    Modality,
    Resampling,
    get_modality,
    s2_harmonise_params,
    source_convention,
)
from terraloom.schemas.tables import RejectReason

__all__ = ["DEFAULT_REQUIRED", "BuildConfig", "SampleResult", "build_block", "build_sample"]

SCL_BAND = "SCL"


@dataclass
class SampleResult:
    """One planned row's outcome: arrays + index row (accepted) or a reject row."""

    sample_id: str
    split: str
    row: int
    arrays: dict[str, np.ndarray] | None
    index_row: dict[str, Any] | None
    reject: dict[str, Any] | None
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return self.reject is None and self.arrays is not None


# --------------------------------------------------------------------------- per-sample state


class _Plane:
    """Mosaic accumulator of one (sample, modality, band).

    Complete values (a full resampling kernel inside valid data) are kept per pixel from
    the best-ranked scene in plan order. Where no scene has a complete value (a seam
    between tiles that do not overlap, the edge of a swath), the partial kernels of all
    scenes are merged (sum of weighted values / sum of weights): bilinear on the merged
    source, so tile edges leave no seam.
    """

    __slots__ = ("_data", "_rank", "empty", "partials", "shape")

    def __init__(self, h: int, w: int) -> None:
        self.shape = (h, w)
        # allocated by the first add: a scene that covers the sample completely (the usual
        # case) hands its layer over, so nothing is filled with NaN and copied
        self._data: np.ndarray | None = None
        self._rank: np.ndarray | None = None
        #: scene rank -> (weighted values, weights) of its partial kernels
        self.partials: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.empty = True

    @property
    def data(self) -> np.ndarray:
        if self._data is None:
            self._data = np.full(self.shape, np.nan, np.float32)
        return self._data

    @property
    def rank(self) -> np.ndarray:
        if self._rank is None:
            self._rank = np.full(self.shape, 255, np.uint8)
        return self._rank

    def add(self, layer: np.ndarray, rank: int, weight: np.ndarray | None = None) -> None:
        """Merge one scene's warped layer; the plane takes ``layer`` over (callers hand in
        a fresh array and do not touch it again)."""
        valid = np.isfinite(layer)
        complete = valid if weight is None else valid & (weight >= 1 - 1e-4)
        if self.empty and complete.all():  # the usual case: one scene covers the sample
            self._data = layer if layer.dtype == np.float32 else layer.astype(np.float32)
            self._rank = np.full(self.shape, rank, np.uint8)
            self.empty = False
            return
        self.empty = False
        data, ranks = self.data, self.rank
        take = complete & (ranks > rank)
        data[take] = layer[take]
        ranks[take] = rank
        if weight is None:
            return
        partial = valid & ~complete
        if partial.any():
            num = np.where(partial, layer * weight, np.float32(0)).astype(np.float32)
            den = np.where(partial, weight, np.float32(0)).astype(np.float32)
            if rank in self.partials:
                pn, pd = self.partials[rank]
                num, den = pn + num, pd + den
            self.partials[rank] = (num, den)
            # remember which scene contributed (for the acquisition time), below complete ones
            mark = partial & (ranks >= 128) & (ranks > rank + 128)
            ranks[mark] = rank + 128

    def result(self) -> np.ndarray:
        """The mosaic; partial kernels are summed in plan order, so the bytes do not
        depend on the order scenes were warped in (threads, block composition)."""
        if not self.partials:
            return self.data
        pnum = np.zeros(self.data.shape, np.float32)
        pden = np.zeros(self.data.shape, np.float32)
        for rank in sorted(self.partials):
            n, d = self.partials[rank]
            pnum += n
            pden += d
        fill = np.isnan(self.data) & (pden >= 0.5 - 1e-6)  # < 0.5: outside every source
        out = self.data.copy()
        out[fill] = pnum[fill] / pden[fill]
        return out


@dataclass
class _Use:
    """One sample needs one band of one scene from an href."""

    sample: int
    modality: str
    band: str
    rank: int  # scene position among this modality's scenes in the plan row
    scene: dict[str, Any]
    asset: dict[str, Any]


@dataclass
class _Sample:
    row: dict[str, Any]
    grid: TargetGrid | None
    issue: Issue | None = None
    planes: dict[tuple[str, str], _Plane] = field(default_factory=dict)
    scenes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: modality -> first asset failure (reason, message)
    failures: dict[str, Issue] = field(default_factory=dict)
    bad_px: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    stats: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    #: quality figures of the conventions applied (``s2_dn_shift_S2L2A``, ``dem_datum_shift_m``)
    notes: dict[str, float] = field(default_factory=dict)
    #: modality -> datums its height sources were in (DEM)
    datums: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    #: io_threads > 1: two scenes of one mosaic may be warped on different threads
    lock: threading.Lock = field(default_factory=threading.Lock)

    def plane(self, modality: str, band: str) -> _Plane:
        key = (modality, band)
        p = self.planes.get(key)
        if p is None:
            assert self.grid is not None
            p = self.planes[key] = _Plane(self.grid.height, self.grid.width)
        return p


def _plan_checks(s: _Sample, config: BuildConfig) -> Issue | None:
    """Rejections known from the plan alone (no reads)."""
    row = s.row
    if s.grid is None or s.grid.width != SAMPLE_PX or s.grid.height != SAMPLE_PX:
        return Issue(
            RejectReason.INTERNAL_ERROR,
            None,
            f"plan grid is not {SAMPLE_PX} x {SAMPLE_PX} px: {row.get('width')} x {row.get('height')}",
        )
    required = config.required_sources
    unmatched = {u["modality"]: u for u in row.get("unmatched") or []}
    for m in required:
        if not s.scenes.get(m):
            u = unmatched.get(m)
            if u is not None:
                return Issue(
                    plan_reason(u.get("reason")),
                    m,
                    u.get("message") or f"{m}: no scene in the plan",
                )
            return Issue(
                RejectReason.NO_MATCH,
                m,
                f"{m}: required but not planned (no scene in the plan row)",
            )
    s1 = [m for m in ("S1GRD", "S1RTC") if m in config.source_modalities and s.scenes.get(m)]
    if s1:
        delta = row.get("s1_s2_delta_days")
        if delta is None:
            delta = _s1_s2_delta(s.scenes)
        issue = check_s1_s2_delta(delta, config.s1_window_days)
        if issue is not None:
            if any(m in required for m in s1):
                return issue
            for m in s1:  # optional S1 out of the window: dropped, not read
                s.failures[m] = Issue(issue.reason, m, issue.message)
    return None


def _s1_s2_delta(scenes: dict[str, list[dict[str, Any]]]) -> float | None:
    s2 = [
        sc["datetime"] for m in ("S2L2A", "S2L1C") for sc in scenes.get(m, []) if sc.get("datetime")
    ]
    s1 = [
        sc["datetime"] for m in ("S1GRD", "S1RTC") for sc in scenes.get(m, []) if sc.get("datetime")
    ]
    if not s1 or not s2:
        return None
    return min(abs((a - b).total_seconds()) / 86400.0 for a in s1 for b in s2)


# --------------------------------------------------------------------------- reading


def _wanted_bands(modality: str, config: BuildConfig) -> tuple[str, ...]:
    bands = config.bands(modality)
    if modality == "S2L2A":
        bands = (*bands, SCL_BAND)
    return bands


_GroupKey = tuple[str, str, Any, tuple[float, ...], tuple[int, ...]]
#: One band of one file: (href, the plan's band index in it or None, registry band). Two
#: bands of one file are two keys even when neither has an index (each is resolved alone).
_SrcKey = tuple[str, int | None, str]


def _src_key(a: dict[str, Any]) -> _SrcKey:
    idx = a.get("band_index")
    return str(a["href"]), None if idx is None else int(idx), str(a["band"])


def _collect_uses(
    samples: list[_Sample], config: BuildConfig
) -> dict[_GroupKey, dict[_SrcKey, list[_Use]]]:
    """Group every (sample, band, scene) need by source geometry, then by (href, band).

    A group is one item's bands that share a pixel grid per the plan (same ``proj:*``):
    they are read with the same windows and warped together, sharing one coordinate
    field per sample. Two bands of one multi-band file are two sources of the group.
    """
    groups: dict[_GroupKey, dict[_SrcKey, list[_Use]]] = defaultdict(lambda: defaultdict(list))
    for i, s in enumerate(samples):
        if s.issue is not None:
            continue
        for m in config.source_modalities:
            if m in s.failures:
                continue
            wanted = _wanted_bands(m, config)
            for rank, scene in enumerate(s.scenes.get(m, [])):
                by_band = {a["band"]: a for a in scene.get("assets") or []}
                for band in wanted:
                    a = by_band.get(band)
                    if a is None:
                        if band != SCL_BAND:
                            s.failures.setdefault(
                                m,
                                Issue(
                                    RejectReason.UNREACHABLE_ASSET,
                                    m,
                                    f"{m}: item {scene.get('item_id')} has no asset for band {band}",
                                ),
                            )
                        continue
                    key = (
                        m,
                        str(scene.get("item_id")),
                        a.get("epsg"),
                        tuple(a.get("transform") or ()),
                        tuple(a.get("shape") or ()),
                    )
                    groups[key][_src_key(a)].append(_Use(i, m, band, rank, scene, a))
    return {k: dict(v) for k, v in groups.items()}


def _fail(samples: list[_Sample], uses: Iterable[_Use], reason: RejectReason, message: str) -> None:
    for u in uses:
        s = samples[u.sample]
        where = f"{u.modality} {u.band} of {u.scene.get('item_id')} at {u.asset.get('href')}"
        issue = Issue(reason, u.modality, f"{where}: {message}")
        with s.lock:  # keep the smallest message: the same reject whatever the read order
            cur = s.failures.get(u.modality)
            if cur is None or issue.message < cur.message:
                s.failures[u.modality] = issue


def _read_resampling(m: Modality, band: str) -> GdalResampling:
    if band == SCL_BAND or m.resampling in (Resampling.NEAREST, Resampling.MODE):
        return GdalResampling.nearest
    return GdalResampling.average


def _geometry_signature(info: AssetInfo) -> tuple:
    gcps = tuple((g.row, g.col, g.x, g.y) for g in info.gcps) if info.transform is None else ()
    crs = info.source_crs.to_wkt() if info.source_crs is not None else None
    return (
        crs,
        tuple(info.transform) if info.transform is not None else None,
        info.width,
        info.height,
        gcps,
    )


def _georef_issue(info: AssetInfo, u: _Use) -> str | None:
    a, sc = u.asset, u.scene
    if sc.get("needs_gcps"):
        return None
    epsg = a.get("epsg") if a.get("epsg") is not None else sc.get("epsg")
    return check_georeferencing(info, epsg, a.get("transform"), a.get("shape"))


class _SamplerCache:
    """Point samplers of the current source geometry, one per (sample, read window).

    Groups are processed in geometry order, so an L1C and an L2A band of the same tile
    grid (or two dates of it) reuse one coordinate field per sample; only the current
    geometry is kept, which bounds memory to one sampler per sample of the block.
    """

    def __init__(self) -> None:
        self.geometry: tuple | None = None
        self.items: dict[tuple, PointSampler | SeparableSampler | None] = {}

    def get(
        self,
        geometry: tuple,
        key: tuple,
        make: Callable[[], PointSampler | SeparableSampler | None],
    ) -> PointSampler | SeparableSampler | None:
        if geometry != self.geometry:
            self.geometry = geometry
            self.items.clear()
        if key not in self.items:
            self.items[key] = make()
        return self.items[key]


@dataclass(frozen=True)
class _Band:
    """One band of an open file that a group reads: its plan key and 1-based file band."""

    key: _SrcKey
    asset: Asset
    file_band: int


def _process_group(
    group: dict[_SrcKey, list[_Use]],
    samples: list[_Sample],
    config: BuildConfig,
    cache: _SamplerCache | None = None,
) -> None:
    """Read the windows of one item's same-grid bands once; warp them onto every sample.

    Each file is opened once however many of its bands the group needs; which band of a
    multi-band file holds which registry band is resolved here (:func:`resolve_band`), and
    a file that cannot say is an ``ambiguous_band`` reject, never band 1 by default."""
    by_href: dict[str, list[_SrcKey]] = defaultdict(list)
    for key in group:
        by_href[key[0]].append(key)
    with ExitStack() as stack:
        bands: list[_Band] = []
        for href in sorted(by_href):
            keys = sorted(by_href[href], key=lambda k: (-1 if k[1] is None else k[1], k[2]))
            uses = [u for k in keys for u in group[k]]
            try:
                asset = stack.enter_context(open_asset(href, config.href_policy))
            except AssetError as exc:
                _fail(samples, uses, exc.reason, exc.message)
                continue
            except Exception as exc:
                _fail(samples, uses, RejectReason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
                continue
            if asset.info.source_crs is None:
                _fail(
                    samples,
                    uses,
                    RejectReason.CRS_MISMATCH,
                    "asset has no georeferencing (no CRS/transform, no GCPs)",
                )
                continue
            if config.check_georeferencing:
                msg = _georef_issue(asset.info, uses[0])
                if msg is not None:
                    _fail(samples, uses, RejectReason.CRS_MISMATCH, msg)
                    continue
            for k in keys:
                u0 = group[k][0]
                names = (u0.band, str(u0.asset.get("key") or ""))
                fb = resolve_band(asset.info, k[1], names)
                if isinstance(fb, str):
                    _fail(samples, group[k], RejectReason.AMBIGUOUS_BAND, fb)
                    continue
                bands.append(_Band(k, asset, fb))
        by_geometry: dict[tuple, list[_Band]] = defaultdict(list)
        for b in bands:
            by_geometry[_geometry_signature(b.asset.info)].append(b)
        for members in by_geometry.values():
            _warp_same_grid(
                members,
                {b.key: group[b.key] for b in members},
                samples,
                config,
                cache or _SamplerCache(),
            )


def _convention_of(u: _Use) -> Any:
    return source_convention(u.scene.get("collection"))


def _harmonise(m: Modality, u: _Use, rw: RasterWindow) -> None:
    """Source values -> the registry's meaning, in place, before any resampling.

    Sentinel-2 DN onto the corpus convention (``S2_STORED_OFFSET_DN``); a land-cover legend
    other than the registry's through its declared class map (codes outside it: nodata).
    """
    if m.name in ("S2L2A", "S2L1C") and u.band != SCL_BAND:
        gain, bias = s2_harmonise_params(
            u.asset.get("scale"), u.asset.get("offset"), u.scene.get("processing_baseline")
        )
        if (gain, bias) != (1.0, 0.0):
            rw.data = rw.data * np.float32(gain) + np.float32(bias)
        return
    conv = _convention_of(u)
    lut = conv.class_lut() if conv is not None else None
    if lut is not None:
        valid = np.isfinite(rw.data)
        codes = np.clip(rw.data[valid], 0, 255).astype(np.uint8)
        mapped = lut[codes].astype(np.float32)
        mapped[mapped == 0] = np.nan
        rw.data[valid] = mapped


def _warp_same_grid(
    bands: list[_Band],
    uses: dict[_SrcKey, list[_Use]],
    samples: list[_Sample],
    config: BuildConfig,
    cache: _SamplerCache,
) -> None:
    info = bands[0].asset.info
    geometry = _geometry_signature(info)
    first = uses[bands[0].key][0]
    m = get_modality(first.modality)
    per_sample: dict[int, dict[_SrcKey, _Use]] = defaultdict(dict)
    for key, us in uses.items():
        for u in us:
            per_sample[u.sample][key] = u
    shift = None
    if m.vertical_datum is not None:
        conv = _convention_of(first)
        datum = source_datum(info.vertical_wkt, conv.vertical_datum if conv else None)
        try:
            shift = height_shift(datum, m.vertical_datum, info.vertical_wkt)
        except VerticalDatumError as exc:
            everyone = [u for us in uses.values() for u in us]
            _fail(samples, everyone, RejectReason.VERTICAL_DATUM, str(exc))
            return
        for i in per_sample:
            with samples[i].lock:
                samples[i].datums[m.name].add(datum)
    order = [i for i in sorted(per_sample) if first.modality not in samples[i].failures]
    warp_rs = modality_resampling(m)
    windows, members = [], []
    for i in order:
        grid = samples[i].grid
        assert grid is not None
        w = source_window(info, grid, warp_rs, tps=config.gcp_tps)
        if w is not None:
            windows.append(w)
            members.append(i)
    if not members:
        return
    decimation = target_decimation(info)
    is_sar = m.resampling is Resampling.BILINEAR_POWER_DB
    conv = _convention_of(first)
    fill_values = conv.fill_values if conv is not None else ()
    for window, idx in cluster_windows(windows, config.read_slack):
        band_windows: list[tuple[_Band, RasterWindow]] = []
        for b in bands:
            us = uses[b.key]
            u0 = us[0]
            try:
                rw = b.asset.read(
                    window,
                    band=b.file_band,
                    decimation=decimation,
                    nodata=u0.asset.get("nodata"),
                    resampling=_read_resampling(m, u0.band),
                    fill_values=fill_values,
                )
            except AssetError as exc:
                _fail(samples, us, exc.reason, exc.message)
                continue
            _harmonise(m, u0, rw)
            if is_sar:
                rw.data = to_linear_power(
                    rw.data, rw.source_dtype, u0.asset.get("scale"), u0.asset.get("offset")
                )
            band_windows.append((b, rw))
        if not band_windows:
            continue
        ref = band_windows[0][1]
        n_members = len(idx)
        # stack each resampling family once per read, not once per sample
        families: dict[GdalResampling, tuple[list[tuple[_Band, RasterWindow]], np.ndarray]] = {}
        by_rs: dict[GdalResampling, list[tuple[_Band, RasterWindow]]] = defaultdict(list)
        for b, rw in band_windows:
            by_rs[modality_resampling(m, uses[b.key][0].band)].append((b, rw))
        band_nan: dict[GdalResampling, np.ndarray] = {}
        for rs, part in by_rs.items():
            families[rs] = (part, np.stack([rw.data for _, rw in part]))
            if rs is not GdalResampling.nearest:  # scanned once per read, not per sample
                band_nan[rs] = np.isnan(families[rs][1]).any(axis=(1, 2))
        bytes_share = sum(rw.bytes_decoded for _, rw in band_windows) / n_members
        read_share = sum(rw.read_ms for _, rw in band_windows) / n_members
        for k in idx:
            i = members[k]
            s = samples[i]
            if first.modality in s.failures:
                continue
            grid = s.grid
            assert grid is not None
            t0 = time.perf_counter()
            mine = per_sample[i]
            win_key = (i, window.row_off, window.col_off, window.height, window.width, decimation)
            sampler = cache.get(
                geometry, win_key, partial(point_sampler, ref, grid, ref.shape, tps=config.gcp_tps)
            )
            dz = None
            if shift is not None and shift.transformer is not None:
                dz = shift.shift(*grid.pixel_centres_lonlat())
                with s.lock:
                    s.notes["dem_datum_shift_m"] = float(np.mean(dz))
            for rs, (part, stacked) in families.items():
                keep = [j for j, (b, _) in enumerate(part) if b.key in mine]
                if not keep:
                    continue
                data = stacked if len(keep) == len(part) else stacked[keep]
                weight = np.zeros((len(keep), grid.height, grid.width), np.float32)
                nan = band_nan.get(rs)
                out = warp_to_grid(
                    ref,
                    grid,
                    rs,
                    data=data,
                    gcp_tps=config.gcp_tps,
                    sampler=sampler,
                    weight=weight,
                    has_nan=None if nan is None else bool(nan[keep].any()),
                )
                for j, layer, wgt in zip(keep, out, weight):
                    b, rw = part[j]
                    u = mine[b.key]
                    if dz is not None:
                        layer = layer + dz
                    if rw.bad is not None:
                        bad = warp_to_grid(
                            ref,
                            grid,
                            GdalResampling.nearest,
                            data=rw.bad.astype(np.float32),
                            gcp_tps=config.gcp_tps,
                            sampler=sampler,
                        )
                        with s.lock:
                            s.bad_px[u.modality] += int(np.count_nonzero(bad > 0.5))
                    with s.lock:
                        s.plane(u.modality, u.band).add(layer, u.rank, wgt)
                        if u.modality in ("S2L2A", "S2L1C") and u.band != SCL_BAND:
                            _, bias = s2_harmonise_params(
                                u.asset.get("scale"),
                                u.asset.get("offset"),
                                u.scene.get("processing_baseline"),
                            )
                            s.notes.setdefault(f"s2_dn_shift_{u.modality}", bias)
            with s.lock:
                s.stats["msec_warp"] += (time.perf_counter() - t0) * 1e3
                s.stats["bytes_read"] += bytes_share
                s.stats["msec_read"] += read_share
                s.stats["reads"] += len(band_windows) / n_members


def _by_href(group: dict[_SrcKey, list[_Use]]) -> dict[str, list[_Use]]:
    out: dict[str, list[_Use]] = defaultdict(list)
    for (href, _, _), uses in sorted(group.items(), key=lambda kv: (kv[0][0], kv[0][2])):
        out[href].extend(uses)
    return dict(out)


def _process_group_safe(
    group: dict[_SrcKey, list[_Use]],
    samples: list[_Sample],
    config: BuildConfig,
    cache: _SamplerCache,
) -> None:
    try:
        hrefs = _by_href(group)
        if is_ee_group(hrefs):  # Earth Engine computes the pixels on each sample's own grid
            read_ee_group(hrefs, samples, config, _fail)
        else:
            _process_group(group, samples, config, cache)
    except Exception as exc:  # a bug must not take the block down; the rows say what happened
        msg = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"
        _fail(samples, [u for us in group.values() for u in us], RejectReason.INTERNAL_ERROR, msg)


def _read_all(
    groups: dict[_GroupKey, dict[_SrcKey, list[_Use]]], samples: list[_Sample], config: BuildConfig
) -> None:
    options = config.reader_options()
    # geometry first (epsg, transform, shape), so groups sharing a pixel grid are adjacent
    keys = sorted(groups, key=lambda k: (repr(k[2]), repr(k[3]), repr(k[4]), k[0], k[1]))

    def work(chunk: list[_GroupKey]) -> None:
        cache = _SamplerCache()
        with gdal_env(options):
            for k in chunk:
                _process_group_safe(groups[k], samples, config, cache)

    if config.io_threads <= 1 or len(keys) <= 1:
        work(keys)
        return
    n = min(config.io_threads, len(keys))
    size = -(-len(keys) // n)  # contiguous chunks keep same-geometry groups on one thread
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(work, [keys[i : i + size] for i in range(0, len(keys), size)]))


def _dominant_scene(s: _Sample, m: str, bands: tuple[str, ...]) -> dict[str, Any] | None:
    scenes = s.scenes.get(m) or []
    for b in bands:
        p = s.planes.get((m, b))
        if p is None:
            continue
        counts = np.bincount((p.rank.ravel() & 127), minlength=256)[: len(scenes)]
        if counts.sum():
            return scenes[int(np.argmax(counts))]
    return scenes[0] if scenes else None


def _when(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return None


@dataclass
class _Judged:
    """A sample's source modalities after the quality rules: the images kept (band, y, x)
    float32, judged and gap-filled), their acquisition times, the quality figures and the
    optional modalities it goes without."""

    images: dict[str, np.ndarray] = field(default_factory=dict)
    times: dict[str, dt.datetime | None] = field(default_factory=dict)
    quality: dict[str, float] = field(default_factory=dict)
    missing: list[Issue] = field(default_factory=list)
    filled_px: int = 0


def _mosaic(s: _Sample, m: Modality, bands: tuple[str, ...]) -> np.ndarray:
    """The (band, y, x) float32 mosaic of a source modality (dB for SAR; NaN = nodata)."""
    assert s.grid is not None
    shape = (s.grid.height, s.grid.width)
    arr = np.stack(
        [
            s.planes[(m.name, b)].result()
            if (m.name, b) in s.planes
            else np.full(shape, np.nan, np.float32)
            for b in bands
        ]
    )
    return power_to_db(arr) if m.resampling is Resampling.BILINEAR_POWER_DB else arr


def _judge_sources(s: _Sample, config: BuildConfig) -> _Judged | Issue:
    """Mosaic and judge every source modality; the Issue of a failed required one."""
    required = set(config.required_sources)
    j = _Judged()
    for m_name in config.source_modalities:
        m = get_modality(m_name)
        bands = config.bands(m_name)
        issue = s.failures.get(m_name)
        if issue is None and not s.scenes.get(m_name):
            issue = unplanned(s.row, m_name)
            if m_name in required:
                issue = Issue(RejectReason.NO_MATCH, m_name, f"{m_name}: no scene in the plan")
        arr = np.empty(0, np.float32)
        if issue is None:
            arr = _mosaic(s, m, bands)
            j.quality[f"nodata_{m_name}"] = nodata_fraction(arr)
            issue = judge_image(
                m_name,
                arr,
                bands,
                max_nodata_fraction=config.max_nodata_fraction,
                bad_px=s.bad_px.get(m_name, 0),
            )
        if issue is not None:
            if m_name in required:
                return issue
            j.quality[f"available_{m_name}"] = 0.0
            j.missing.append(Issue(issue.reason, m_name, issue.message))
            continue
        if config.fill_small_gaps:
            arr, n = fill_small_gaps(arr)
            j.filled_px += n
            if n:
                j.quality[f"filled_px_{m_name}"] = float(n)
        j.images[m_name] = arr
        j.quality[f"available_{m_name}"] = 1.0
        sc = _dominant_scene(s, m_name, bands)
        j.times[m_name] = _when(sc.get("datetime")) if sc else None
    return j


def _finish(
    s: _Sample, config: BuildConfig, captioner: Captioner
) -> tuple[dict[str, np.ndarray], dict[str, Any]] | Issue:
    """Judge, derive, caption one sample and assemble its records; an Issue when it is
    rejected."""
    assert s.grid is not None
    shape = (s.grid.height, s.grid.width)
    row = s.row
    judged = _judge_sources(s, config)
    if isinstance(judged, Issue):
        return judged
    quality = judged.quality
    for k, v in s.notes.items():  # conventions applied to the modalities kept
        source = "DEM" if k.startswith("dem_") else k.rsplit("_", 1)[-1]
        if source in judged.images:
            quality[k] = v
    s2_bands = config.bands("S2L2A")
    s2_scene = _dominant_scene(s, "S2L2A", s2_bands) if "S2L2A" in judged.images else None
    cloud_mask = np.full(shape, CLOUD_MASK_NODATA, np.uint8)
    cfrac: float | None = None
    if "S2L2A" in judged.images:
        scl = s.planes.get(("S2L2A", SCL_BAND))
        cover = (s2_scene or {}).get("cloud_cover")
        cloud_mask, cfrac = sample_cloud(None if scl is None else scl.result(), cover, shape)
    if cfrac is not None:
        quality["cloud_fraction"] = cfrac
        if "S2L2A" in config.required_sources:
            issue = check_cloud(cfrac, config.max_cloud_fraction)
            if issue is not None:
                return issue
    lat, lon = float(row["center_lat"]), float(row["center_lon"])
    bands = {m: config.bands(m) for m in judged.images}
    derived = derive(DeriveInputs(lat, lon, judged.images, bands, s2_scene or {}))
    quality.update(derived.quality)
    caption, stats = caption_sample(
        captioner,
        lat,
        lon,
        {**judged.images, **derived.arrays},
        caption_time(judged.times),
    )
    quality.update(stats.as_quality())
    issue = underivable(config.required, derived)
    if issue is not None:
        return issue
    arrays = corpus_arrays(config.modalities, judged.images, bands, derived, caption, shape)
    missing = judged.missing + unsourced(config.modalities, judged.missing, derived)
    arrays["cloud_mask"] = cloud_mask
    arrays["epsg"] = np.asarray(s.grid.epsg, np.int32)
    arrays["transform"] = np.asarray(row["transform"][:6], np.float64)
    delta = row.get("s1_s2_delta_days")
    if delta is None:
        delta = _s1_s2_delta(s.scenes)
    return arrays, index_row(
        row,
        times=judged.times,
        cloud_fraction=cfrac,
        s1_s2_delta_days=delta,
        filled_px=judged.filled_px,
        quality=quality,
        missing=missing,
        caption=caption,
        s2_convention=S2_CONVENTION
        if any(m in judged.images for m in ("S2L2A", "S2L1C"))
        else None,
        dem_vertical_datum=("+".join(sorted(s.datums["DEM"])) or "unknown")
        if "DEM" in judged.images
        else None,
    )


# --------------------------------------------------------------------------- entry points


def _new_sample(row: dict[str, Any]) -> _Sample:
    try:
        grid: TargetGrid | None = TargetGrid.from_plan(row)
    except Exception:
        grid = None
    scenes: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for sc in row.get("scenes") or []:
        try:
            name = get_modality(sc["modality"]).name
        except KeyError:
            continue
        scenes[name].append(sc)
    return _Sample(row=row, grid=grid, scenes=dict(scenes))


def build_block(plan_rows: list[dict[str, Any]], config: BuildConfig) -> list[SampleResult]:
    """Process the plan rows of one shard block, scene-major; one result per row.

    Each source asset window is read and decoded once for all samples of the block that
    need it, then co-registered per sample. Never raises for a bad sample: it becomes a
    :class:`SampleResult` with a reject (reason from ``RejectReason``).
    """
    t_start = time.perf_counter()
    samples = [_new_sample(r) for r in plan_rows]
    for s in samples:
        try:
            s.issue = _plan_checks(s, config)
        except Exception as exc:
            s.issue = Issue(
                RejectReason.INTERNAL_ERROR, None, f"plan check failed: {type(exc).__name__}: {exc}"
            )
    _read_all(_collect_uses(samples, config), samples, config)
    captioner = config.make_captioner()  # a bad captioner setting is a config error: raise
    results: list[SampleResult] = []
    for s in samples:
        row = s.row
        t0 = time.perf_counter()
        outcome: tuple[dict[str, np.ndarray], dict[str, Any]] | Issue
        if s.issue is not None:
            outcome = s.issue
        else:
            try:
                outcome = _finish(s, config, captioner)
            except Exception as exc:
                outcome = Issue(
                    RejectReason.INTERNAL_ERROR,
                    None,
                    f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}",
                )
        stats = dict(s.stats)
        stats["msec_finish"] = (time.perf_counter() - t0) * 1e3
        s.planes.clear()  # free the block's planes as soon as a sample is done
        if isinstance(outcome, Issue):
            results.append(
                SampleResult(
                    row["sample_id"],
                    row["split"],
                    int(row["row"]),
                    None,
                    None,
                    reject_row(row, outcome),
                    stats,
                )
            )
        else:
            arrays, index_row = outcome
            for e in index_row.get("missing_modalities") or []:
                # counted per modality and reason: Beam counters, the Dask sums, block markers
                key = f"missing_{e['modality']}_{e['reason']}"
                stats[key] = stats.get(key, 0.0) + 1.0
            results.append(
                SampleResult(
                    row["sample_id"], row["split"], int(row["row"]), arrays, index_row, None, stats
                )
            )
    total = (time.perf_counter() - t_start) * 1e3
    for r in results:
        r.stats["msec_block_share"] = total / max(len(results), 1)
    return results


def build_sample(plan_row: dict[str, Any], config: BuildConfig) -> SampleResult:
    """One sample on its own (a block of one): for tests, debugging and per-sample baselines."""
    return build_block([plan_row], config)[0]
