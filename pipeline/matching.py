"""Scene matching: for one sample, which items of each modality it will be made from.

Rules (per modality, configured by :class:`MatchConfig`):

- **S2L2A**: items of one acquisition (same platform, same UTC day: one pass) whose union
  covers the footprint; cloud + shadow over the footprint from the SCL band when it can be
  read (only the footprint's window, at a coarse resolution so overviews serve it), else the
  items' ``eo:cloud_cover``; at most ``max_cloud`` percent; the clearest wins, then the most
  recent. With ``prefer_complete`` an acquisition that also has its L1C twin and S1 within
  the window ranks before one that does not (a corpus sample needs all modalities).
- **S2L1C**: the *same* acquisition as the chosen L2A (same platform and day, tiles of the
  L2A first); chosen like L2A from ``eo:cloud_cover`` when L2A is not planned.
- **S1GRD / S1RTC**: the acquisition (platform, orbit direction, relative orbit, day) with
  VV+VH covering the footprint closest in time to the S2 date within +-``s1_window_days``,
  the S2 scene's orbit direction preferred.
- **DEM**: the tiles covering the footprint; **LULC**: the tiles of the S2 year (nearest
  year within ``lulc_max_year_gap``) covering the footprint.

Several items are listed when the footprint crosses tile edges (a greedy cover, pruned to
the items actually needed); a modality whose items do not cover the footprint is never
planned. Every unmatched modality gets a :class:`~schemas.tables.RejectReason` and a message.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from terraloom.pipeline.coverage import covering_set
from terraloom.pipeline.grid import SampleGrid
from terraloom.pipeline.scl_stats import SclStats, local_path, scl_footprint_stats, scl_readable
from terraloom.pipeline.sources.base import SCL_BAND, SourceItem
from terraloom.schemas.modalities import get_modality
from terraloom.schemas.tables import RejectReason

S2_MODALITIES = ("S2L2A", "S2L1C")
S1_MODALITIES = ("S1GRD", "S1RTC")
ORBIT_PREFERENCES = ("s2", "ascending", "descending", "any")
SCL_HREF_POLICIES = ("local", "any", "never")


@dataclass(frozen=True)
class MatchConfig:
    """How scenes are matched to a sample (see the module docstring for the rules)."""

    #: percent cloud + shadow over the footprint an S2 acquisition may have
    max_cloud: float = 20.0
    #: S1 must be within this many days of the S2 acquisition
    s1_window_days: float = 7.0
    #: preferred S1 orbit direction: "s2" (the S2 scene's), "ascending", "descending", "any"
    s1_orbit: str = "s2"
    #: which SCL hrefs may be read for cloud cover: "local" files, "any" (also http), "never"
    scl_hrefs: str = "local"
    #: resolution (m) of the footprint grid SCL is resampled onto for cloud statistics
    cloud_res_m: float = 60.0
    #: percent of the footprint without SCL data above which an acquisition does not cover
    max_scl_nodata: float = 20.0
    #: uncovered fraction of the footprint area tolerated by the geometry coverage check
    coverage_tolerance: float = 1e-5
    #: LULC: how many years away from the S2 year a map may be
    lulc_max_year_gap: int = 1
    #: rank S2 acquisitions with L1C + S1 partners before clearer ones without
    prefer_complete: bool = True

    def __post_init__(self) -> None:
        if self.s1_orbit not in ORBIT_PREFERENCES:
            raise ValueError(f"s1_orbit must be one of {ORBIT_PREFERENCES}, got {self.s1_orbit!r}")
        if self.scl_hrefs not in SCL_HREF_POLICIES:
            raise ValueError(
                f"scl_hrefs must be one of {SCL_HREF_POLICIES}, got {self.scl_hrefs!r}"
            )
        if not 0 <= self.max_cloud <= 100:
            raise ValueError(f"max_cloud is a percentage, got {self.max_cloud}")
        if self.s1_window_days < 0:
            raise ValueError(f"s1_window_days must be >= 0, got {self.s1_window_days}")


@dataclass(frozen=True)
class Acquisition:
    """The items one modality of a sample is made from (one pass, or a set of static tiles)."""

    items: tuple[SourceItem, ...]
    #: percent cloud + shadow over the footprint (S2), else None
    cloud_cover: float | None = None
    #: where cloud_cover came from: "scl", "item" (eo:cloud_cover) or "" (not optical)
    cloud_source: str = ""

    @property
    def datetime(self) -> datetime:
        return min(it.datetime for it in self.items)

    @property
    def orbit_state(self) -> str | None:
        return self.items[0].orbit_state

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(it.id for it in self.items)


@dataclass(frozen=True)
class ModalityMatch:
    modality: str
    acquisition: Acquisition | None = None
    reason: str | None = None
    message: str = ""

    @property
    def matched(self) -> bool:
        return self.acquisition is not None


@dataclass(frozen=True)
class SampleMatch:
    sample: SampleGrid
    matches: tuple[ModalityMatch, ...]
    #: S1 datetime minus S2 datetime in days (S1GRD if planned, else S1RTC); None if either missing
    s1_s2_delta_days: float | None = None

    def get(self, modality: str) -> ModalityMatch | None:
        return next((m for m in self.matches if m.modality == modality), None)


def _cover(
    items: Sequence[SourceItem], sample: SampleGrid, cfg: MatchConfig
) -> tuple[SourceItem, ...] | None:
    return covering_set(items, sample.footprint, cfg.coverage_tolerance, sample.epsg)


# --- grouping ---------------------------------------------------------------------------------


def s2_pass_key(item: SourceItem) -> Hashable:
    """Tiles of one Sentinel-2 pass: same platform, same UTC day."""
    return (item.platform or "", item.datetime.date())


def s1_pass_key(item: SourceItem) -> Hashable:
    """Slices of one Sentinel-1 pass: platform, orbit direction, relative orbit, UTC day."""
    return (
        item.platform or "",
        item.orbit_state or "",
        item.relative_orbit or -1,
        item.datetime.date(),
    )


def group_by(
    items: Sequence[SourceItem], key: Callable[[SourceItem], Hashable]
) -> dict[Hashable, list[SourceItem]]:
    groups: dict[Hashable, list[SourceItem]] = defaultdict(list)
    for it in items:
        groups[key(it)].append(it)
    return dict(groups)


def _complete_bands(
    items: Sequence[SourceItem], modality: str, bands: Sequence[str] | None = None
) -> tuple[list[SourceItem], list[str]]:
    """Items with an asset for every band the plan wants (``bands``; None: all of the
    registry's), and a note on each one without."""
    ok: list[SourceItem] = []
    bad: list[str] = []
    for it in items:
        missing = it.missing_bands(modality, bands)
        if missing:
            bad.append(f"{it.id} lacks {','.join(missing)}")
        else:
            ok.append(it)
    return ok, bad


def _fail(modality: str, reason: RejectReason, message: str) -> ModalityMatch:
    return ModalityMatch(modality, None, reason.value, message)


# --- S2 ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _S2Candidate:
    acquisition: Acquisition
    key: Hashable


def _optical_cloud(
    items: tuple[SourceItem, ...], sample: SampleGrid, cfg: MatchConfig, use_scl: bool
) -> tuple[float | None, str, float]:
    """(cloud %, source, scl nodata %) of an acquisition over the footprint."""
    if use_scl and all(
        SCL_BAND in it.assets and scl_readable(it.assets[SCL_BAND].href, cfg.scl_hrefs)
        for it in items
    ):
        try:
            stats = scl_footprint_stats(items, sample, cfg.cloud_res_m)
        except Exception:  # unreadable SCL: fall back to the item metadata
            stats = None
        if stats is not None:
            return stats.cloud_pct, "scl", stats.nodata_pct
    covers = [it.cloud_cover for it in items]
    if any(c is None for c in covers):
        return None, "item", 0.0
    return max(c for c in covers if c is not None), "item", 0.0


def s2_candidates(
    modality: str,
    items: Sequence[SourceItem],
    sample: SampleGrid,
    cfg: MatchConfig,
    use_scl: bool,
    bands: Sequence[str] | None = None,
) -> tuple[list[_S2Candidate], ModalityMatch | None]:
    """Covering, cloud-screened acquisitions of an S2 product, or the reason there are none."""
    if not items:
        return [], _fail(
            modality, RejectReason.NO_MATCH, "no item intersects the footprint in the period"
        )
    usable, incomplete = _complete_bands(items, modality, bands)
    if not usable:
        return [], _fail(
            modality, RejectReason.NO_MATCH, f"no item has all bands ({'; '.join(incomplete[:3])})"
        )
    covering: list[_S2Candidate] = []
    too_cloudy: list[float] = []
    no_data = 0
    for key, group in sorted(group_by(usable, s2_pass_key).items(), key=lambda kv: str(kv[0])):
        cover = _cover(group, sample, cfg)
        if cover is None:
            continue
        cloud, source, nodata = _optical_cloud(cover, sample, cfg, use_scl)
        if source == "scl" and (nodata > cfg.max_scl_nodata or cloud is None):
            no_data += 1
            continue
        if cloud is not None and cloud > cfg.max_cloud:
            too_cloudy.append(cloud)
            continue
        covering.append(_S2Candidate(Acquisition(cover, cloud, source), key))
    if covering:
        return covering, None
    if too_cloudy:
        return [], _fail(
            modality,
            RejectReason.CLOUDY,
            f"{len(too_cloudy)} covering acquisitions, clearest {min(too_cloudy):.1f}% cloud over the footprint (max {cfg.max_cloud:g}%)",
        )
    if no_data:
        return [], _fail(
            modality,
            RejectReason.NO_COVERAGE,
            f"{no_data} acquisitions lack SCL data over > {cfg.max_scl_nodata:g}% of the footprint",
        )
    return [], _fail(
        modality,
        RejectReason.NO_COVERAGE,
        f"{len(usable)} items intersect but no pass covers the footprint",
    )


def _rank_clear_recent(c: _S2Candidate) -> tuple[float, float, tuple[str, ...]]:
    cloud = c.acquisition.cloud_cover
    return (
        math.inf if cloud is None else round(cloud, 3),
        -c.acquisition.datetime.timestamp(),
        c.acquisition.ids,
    )


def l1c_for(
    l2a: Acquisition,
    l1c_items: Sequence[SourceItem],
    sample: SampleGrid,
    cfg: MatchConfig,
    bands: Sequence[str] | None = None,
) -> ModalityMatch:
    """The L1C items of the same pass as the chosen L2A acquisition."""
    if not l1c_items:
        return _fail(
            "S2L1C", RejectReason.NO_MATCH, "no L1C item intersects the footprint in the period"
        )
    usable, _ = _complete_bands(l1c_items, "S2L1C", bands)
    key = s2_pass_key(l2a.items[0])
    same_pass = [it for it in usable if s2_pass_key(it) == key]
    if not same_pass:
        platform = l2a.items[0].platform or "?"
        return _fail(
            "S2L1C",
            RejectReason.NO_MATCH,
            f"no L1C item of the L2A acquisition {l2a.datetime:%Y-%m-%d} ({platform})",
        )
    tiles = {it.mgrs_tile for it in l2a.items}
    twins = [it for it in same_pass if it.mgrs_tile in tiles]
    cover = _cover(twins, sample, cfg) or _cover(same_pass, sample, cfg)
    if cover is None:
        return _fail(
            "S2L1C",
            RejectReason.NO_COVERAGE,
            "the L1C items of the L2A acquisition do not cover the footprint",
        )
    return ModalityMatch("S2L1C", Acquisition(cover, l2a.cloud_cover, l2a.cloud_source))


# --- S1 ---------------------------------------------------------------------------------------


def s1_passes(
    modality: str,
    items: Sequence[SourceItem],
    sample: SampleGrid,
    cfg: MatchConfig,
    bands: Sequence[str] | None = None,
) -> list[Acquisition] | ModalityMatch:
    """The S1 passes (VV+VH slices of one pass) covering the footprint, or why there are none."""
    if not items:
        return _fail(
            modality, RejectReason.NO_MATCH, "no item intersects the footprint in the period"
        )
    usable, incomplete = _complete_bands(items, modality, bands)
    if not usable:
        return _fail(
            modality, RejectReason.NO_MATCH, f"no item has VV+VH ({'; '.join(incomplete[:3])})"
        )
    passes: list[Acquisition] = []
    for _, group in sorted(group_by(usable, s1_pass_key).items(), key=lambda kv: str(kv[0])):
        cover = _cover(group, sample, cfg)
        if cover is not None:
            passes.append(Acquisition(cover))
    if not passes:
        return _fail(
            modality,
            RejectReason.NO_COVERAGE,
            f"{len(usable)} items intersect but no pass covers the footprint",
        )
    return passes


def pick_s1(
    modality: str,
    passes: list[Acquisition] | ModalityMatch,
    cfg: MatchConfig,
    reference: Acquisition | None,
    period: tuple[datetime, datetime] | None = None,
) -> ModalityMatch:
    """The pass closest in time to ``reference`` (the S2 acquisition) within the window, the
    preferred orbit direction first. Without a reference (no S2 planned): the most recent
    pass in the period."""
    if isinstance(passes, ModalityMatch):
        return passes
    want = cfg.s1_orbit
    if want == "s2":
        want = (reference.orbit_state if reference is not None else None) or "any"
    if reference is None:
        if period is not None:
            passes = [p for p in passes if period[0] <= p.datetime <= period[1]] or passes
        best = min(
            passes,
            key=lambda p: (want != "any" and p.orbit_state != want, -p.datetime.timestamp(), p.ids),
        )
        return ModalityMatch(modality, best)
    ref = reference.datetime

    def delta(p: Acquisition) -> float:
        return abs((p.datetime - ref).total_seconds()) / 86400.0

    within = [p for p in passes if delta(p) <= cfg.s1_window_days]
    if not within:
        closest = min(delta(p) for p in passes)
        return _fail(
            modality,
            RejectReason.S1_S2_DELTA,
            f"closest covering pass is {closest:.1f} days from S2 {ref:%Y-%m-%d} (window {cfg.s1_window_days:g})",
        )
    best = min(
        within, key=lambda p: (want != "any" and p.orbit_state != want, round(delta(p), 6), p.ids)
    )
    return ModalityMatch(modality, best)


# --- static layers ----------------------------------------------------------------------------


def static_match(
    modality: str,
    items: Sequence[SourceItem],
    sample: SampleGrid,
    cfg: MatchConfig,
    bands: Sequence[str] | None = None,
) -> ModalityMatch:
    """Tiles of a time-invariant layer (DEM) covering the footprint."""
    if not items:
        return _fail(modality, RejectReason.NO_MATCH, "no tile intersects the footprint")
    usable, incomplete = _complete_bands(items, modality, bands)
    if not usable:
        return _fail(
            modality,
            RejectReason.NO_MATCH,
            f"no tile has the {modality} band ({'; '.join(incomplete[:3])})",
        )
    cover = _cover(usable, sample, cfg)
    if cover is None:
        return _fail(
            modality,
            RejectReason.NO_COVERAGE,
            f"{len(usable)} tiles intersect but do not cover the footprint",
        )
    return ModalityMatch(modality, Acquisition(cover))


def yearly_match(
    modality: str,
    items: Sequence[SourceItem],
    sample: SampleGrid,
    cfg: MatchConfig,
    year: int,
    bands: Sequence[str] | None = None,
) -> ModalityMatch:
    """Tiles of the annual map of ``year`` (else the nearest year within the gap) covering the footprint."""
    if not items:
        return _fail(modality, RejectReason.NO_MATCH, "no tile intersects the footprint")
    usable, _ = _complete_bands(items, modality, bands)
    by_year: dict[int, list[SourceItem]] = defaultdict(list)
    for it in usable:
        by_year[it.year].append(it)
    uncovered: list[int] = []
    for y in sorted(by_year, key=lambda y: (abs(y - year), -y)):
        if abs(y - year) > cfg.lulc_max_year_gap:
            break
        cover = _cover(by_year[y], sample, cfg)
        if cover is not None:
            return ModalityMatch(modality, Acquisition(cover))
        uncovered.append(y)
    if uncovered:
        return _fail(
            modality,
            RejectReason.NO_COVERAGE,
            f"maps of {sorted(uncovered)} do not cover the footprint",
        )
    return _fail(
        modality,
        RejectReason.NO_MATCH,
        f"no map within {cfg.lulc_max_year_gap} year(s) of {year} (have {sorted(by_year)})",
    )


# --- one sample -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchRequest:
    """What to match for a sample: modalities in order, and the period the plan covers."""

    modalities: tuple[str, ...]
    period: tuple[datetime, datetime]
    #: read SCL for cloud cover where ``MatchConfig.scl_hrefs`` allows
    use_scl: bool = True
    #: the bands planned per modality, e.g. (("S2L2A", ("B02", "B03", "B04", "B08")),): an
    #: item needs assets for those only (a 4-band static catalog, a sensor offering some
    #: S2 bands); modalities not listed need all their registry bands
    band_subset: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def bands(self, modality: str) -> tuple[str, ...] | None:
        name = get_modality(modality).name
        return next((tuple(b) for m, b in self.band_subset if get_modality(m).name == name), None)


def match_sample(
    sample: SampleGrid,
    candidates: Mapping[str, Sequence[SourceItem]],
    request: MatchRequest,
    cfg: MatchConfig = MatchConfig(),
) -> SampleMatch:
    """Choose the items of every requested modality for one sample.

    ``candidates`` holds, per modality, the items intersecting the footprint (S2 in the
    period, S1 in the period widened by the window, LULC in the period's years, DEM any).
    """
    mods = tuple(get_modality(m).name for m in request.modalities)
    results: dict[str, ModalityMatch] = {}
    reference: Acquisition | None = None
    s1_wanted = [m for m in S1_MODALITIES if m in mods]
    s1_pre = {
        m: s1_passes(m, candidates.get(m, ()), sample, cfg, request.bands(m)) for m in s1_wanted
    }

    def s2_in_period(m: str) -> list[SourceItem]:
        t0, t1 = request.period
        return [it for it in candidates.get(m, ()) if t0 <= it.datetime <= t1]

    if "S2L2A" in mods:
        cands, failure = s2_candidates(
            "S2L2A", s2_in_period("S2L2A"), sample, cfg, request.use_scl, request.bands("S2L2A")
        )
        if failure is not None:
            results["S2L2A"] = failure
        else:
            l1c_items = s2_in_period("S2L1C")
            l1c_bands = request.bands("S2L1C")

            def completeness(c: _S2Candidate) -> int:
                if not cfg.prefer_complete:
                    return 0
                n = 0
                if (
                    "S2L1C" in mods
                    and l1c_for(c.acquisition, l1c_items, sample, cfg, l1c_bands).matched
                ):
                    n += 1
                for m in s1_wanted:
                    if pick_s1(m, s1_pre[m], cfg, c.acquisition).matched:
                        n += 1
                return n

            best = min(cands, key=lambda c: (-completeness(c), *_rank_clear_recent(c)))
            reference = best.acquisition
            results["S2L2A"] = ModalityMatch("S2L2A", reference)
        if "S2L1C" in mods:
            if reference is not None:
                results["S2L1C"] = l1c_for(
                    reference, s2_in_period("S2L1C"), sample, cfg, request.bands("S2L1C")
                )
            else:
                results["S2L1C"] = _fail(
                    "S2L1C", RejectReason.NO_MATCH, "no S2L2A acquisition to pair with"
                )
    elif "S2L1C" in mods:
        cands, failure = s2_candidates(
            "S2L1C", s2_in_period("S2L1C"), sample, cfg, False, request.bands("S2L1C")
        )
        if failure is not None:
            results["S2L1C"] = failure
        else:
            reference = min(cands, key=_rank_clear_recent).acquisition
            results["S2L1C"] = ModalityMatch("S2L1C", reference)

    s2_wanted = any(m in mods for m in S2_MODALITIES)
    for m in s1_wanted:
        if s2_wanted and reference is None:
            results[m] = _fail(m, RejectReason.NO_MATCH, "no S2 acquisition to take the date from")
        else:
            results[m] = pick_s1(m, s1_pre[m], cfg, reference, request.period)

    year = (reference.datetime if reference is not None else request.period[0]).year
    for m in mods:
        if m in results or m in S2_MODALITIES or m in S1_MODALITIES:
            continue
        if m == "LULC":
            results[m] = yearly_match(m, candidates.get(m, ()), sample, cfg, year, request.bands(m))
        else:
            results[m] = static_match(m, candidates.get(m, ()), sample, cfg, request.bands(m))

    delta = None
    if reference is not None:
        for m in S1_MODALITIES:
            r = results.get(m)
            if r is not None and r.acquisition is not None:
                delta = (r.acquisition.datetime - reference.datetime).total_seconds() / 86400.0
                break
    return SampleMatch(sample, tuple(results[m] for m in mods), delta)


__all__ = [
    "ORBIT_PREFERENCES",
    "S1_MODALITIES",
    "S2_MODALITIES",
    "SCL_HREF_POLICIES",
    "Acquisition",
    "MatchConfig",
    "MatchRequest",
    "ModalityMatch",
    "SampleMatch",
    "SclStats",
    "covering_set",
    "l1c_for",
    "local_path",
    "match_sample",
    "pick_s1",
    "s1_passes",
    "s1_pass_key",
    "s2_candidates",
    "s2_pass_key",
    "scl_footprint_stats",
    "scl_readable",
    "static_match",
    "yearly_match",
]
