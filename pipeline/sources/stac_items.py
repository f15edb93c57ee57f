"""Mapping STAC items onto :class:`~terraloom.pipeline.sources.items.SourceItem`: band asset
keys of every provider, projections in ``proj:epsg`` or ``proj:code`` at item or asset level,
relative, signed or ``s3://`` hrefs, Sentinel-2 processing baselines and MGRS tiles.

One idea, the STAC item -> SourceItem mapping (``item_from_stac`` and the readers of each
STAC field it needs), shared by the STAC API and static-catalog sources.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlparse

import pystac
import shapely
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

from terraloom.pipeline.sources.items import (
    SCL_BAND,
    ItemError,
    SourceAsset,
    SourceError,
    SourceItem,
    TimeRange,
)
from terraloom.schemas.modalities import (
    REGISTRY,
    Modality,
    get_modality,
    s2_reflectance_params,
    source_convention,
)

#: Collections that serve a registry modality without being listed in the registry.
COLLECTION_ALIASES: dict[str, str] = {
    "io-lulc-annual-v02": "LULC",  # same 9-class Esri legend, annual 2017-2023
    "sentinel-2-c1-l2a": "S2L2A",  # Earth Search collection 1
    "sentinel-2-c1-l1c": "S2L1C",
}
#: Collections whose pixels are in radar geometry (georeferenced only by GCPs).
GCP_COLLECTIONS = frozenset({"sentinel-1-grd"})
SAR_POLARIZATIONS = ("VV", "VH", "HH", "HV")

#: Region of public buckets whose ``s3://`` hrefs Earth Search returns without storage info.
S3_BUCKET_REGIONS: dict[str, str] = {
    "sentinel-cogs": "us-west-2",
    "sentinel-s2-l2a": "eu-central-1",  # requester pays
    "sentinel-s2-l1c": "eu-central-1",  # requester pays
    "sentinel-s1-l1c": "eu-central-1",  # requester pays
    "copernicus-dem-30m": "eu-central-1",
    "copernicus-dem-90m": "eu-central-1",
}


def modality_for_collection(collection: str) -> Modality | None:
    """The registry modality a collection serves (registry ids first, then the collections
    with declared conventions, e.g. ``esa-worldcover``, then aliases)."""
    for m in REGISTRY:
        if collection in m.collections:
            return m
    conv = source_convention(collection)
    if conv is not None:
        return get_modality(conv.modality)
    alias = COLLECTION_ALIASES.get(collection)
    return get_modality(alias) if alias else None


def parse_datetime(value: Any) -> datetime | None:
    """ISO 8601 (with ``Z``, offset, or space separator as in some PC items) -> aware UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value
    else:
        text = str(value).strip().replace(" ", "T")
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        # Python < 3.11 style fractional seconds of odd length are fine on 3.11+.
        dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def parse_time_range(text: str) -> TimeRange:
    """``START/END`` (dates or datetimes, END inclusive for bare dates) -> aware UTC range."""
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ValueError(f"bad time range {text!r}: expected START/END, e.g. 2023-06-01/2023-08-31")
    try:
        start = parse_datetime(parts[0])
        end = parse_datetime(parts[1])
    except ValueError as err:
        raise ValueError(f"bad time range {text!r}: {err}") from None
    assert start is not None and end is not None
    if len(parts[1].strip()) == 10:  # a bare date: include the whole day
        end = end.replace(hour=23, minute=59, second=59, microsecond=999999)
    if end < start:
        raise ValueError(f"bad time range {text!r}: end before start")
    return start, end


def parse_epsg(value: Any) -> int | None:
    """``proj:epsg`` (int) or ``proj:code`` (``"EPSG:32633"``) -> int; other codes -> None."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*EPSG:(\d+)\s*", str(value), flags=re.IGNORECASE)
    return int(m.group(1)) if m else None


def _proj_epsg(d: Mapping[str, Any]) -> int | None:
    if "proj:epsg" in d and d["proj:epsg"] is not None:
        return parse_epsg(d["proj:epsg"])
    return parse_epsg(d.get("proj:code"))


def _floats(v: Any, n: int) -> tuple[float, ...] | None:
    if not v or len(v) < n:
        return None
    return tuple(float(x) for x in v[:n])


def s3_to_https(
    href: str, item: Mapping[str, Any] | None = None, asset: Mapping[str, Any] | None = None
) -> str:
    """``s3://bucket/key`` -> ``https://bucket.s3.<region>.amazonaws.com/key``.

    The region comes from the STAC storage extension when the item carries it
    (``storage:schemes`` + the asset's ``storage:refs``), else from a table of known
    public buckets. Requester-pays buckets stay unreadable anonymously; the build reports
    them as unreachable assets.
    """
    if not href.startswith("s3://"):
        return href
    bucket, _, key = href[5:].partition("/")
    region = None
    if item is not None and asset is not None:
        schemes = (item.get("properties") or {}).get("storage:schemes") or {}
        for ref in asset.get("storage:refs") or []:
            scheme = schemes.get(ref) or {}
            if scheme.get("type") == "aws-s3" and scheme.get("region"):
                region = scheme["region"]
                break
    region = region or S3_BUCKET_REGIONS.get(bucket)
    host = f"{bucket}.s3.{region}.amazonaws.com" if region else f"{bucket}.s3.amazonaws.com"
    return f"https://{host}/{key}"


_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]+:")


def _absolute(href: str, base: str | None) -> str:
    """Resolve a relative href against the item's self href; local paths become file:// URIs.

    An href that starts with a scheme of two or more letters (not a Windows drive letter) is
    returned as it is. That is every href of a STAC API's answer, and this runs once per asset
    of every item searched (~120k times for 558 cells), so a regex match answers first and
    ``urlparse`` decides the rest: the same answer, and ``urlparse`` was 17 % of a plan's CPU."""
    if _URL_SCHEME.match(href):
        return href
    parsed = urlparse(href)  # what the regex leaves: controls, spaces, no scheme
    if parsed.scheme and len(parsed.scheme) > 1:  # not a Windows drive letter
        return href
    if href.startswith("/"):
        return "file://" + href
    if base is None:
        raise ItemError(
            "bad_assets", f"relative asset href {href!r} without a self href to resolve it against"
        )
    if "://" not in base:
        base = "file://" + base if base.startswith("/") else base
    return urljoin(base, href)


def _eo_band_names(asset: Mapping[str, Any]) -> list[str]:
    return [b.get("name") for b in asset.get("eo:bands") or [] if b.get("name")]


def _band_list(asset: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The asset's per-band entries in file band order: ``eo:bands`` (names), else STAC 1.1
    ``bands``, else ``raster:bands`` (the longest list wins: a one-entry ``eo:bands`` next to
    a three-entry ``raster:bands`` does not describe the file's layout)."""
    lists = [asset.get(k) for k in ("eo:bands", "bands", "raster:bands")]
    usable = [
        [e if isinstance(e, Mapping) else {} for e in v] for v in lists if isinstance(v, list)
    ]
    return max(usable, key=len, default=[])


#: Assets that hold a rendering of bands (8-bit true colour), never the bands' values.
_RENDERED_ASSETS = ("visual", "tci", "thumbnail", "overview", "rendered_preview")


def _is_rendering(key: str, asset: Mapping[str, Any]) -> bool:
    roles = asset.get("roles") or []
    return (
        key.lower().removesuffix("-jp2") in _RENDERED_ASSETS
        or key.endswith("-jp2")
        or any(r in ("visual", "thumbnail", "overview") for r in roles if isinstance(r, str))
    )


def _index_in(entries: Sequence[Mapping[str, Any]], b: Any) -> int | None:
    """1-based position of registry band ``b`` in a band list: by name (registry, PC or Earth
    Search spelling), else by a common name no other entry shares; None if absent."""
    names = {n.lower() for n in (b.name, b.asset_key, b.es_asset_key) if n}
    for i, e in enumerate(entries):
        if str(e.get("name") or "").lower() in names:
            return i + 1
    if b.common_name:
        hits = [i for i, e in enumerate(entries) if e.get("common_name") == b.common_name]
        if len(hits) == 1:
            return hits[0] + 1
    return None


def _band_asset_keys(
    m: Modality, assets: Mapping[str, Mapping[str, Any]], collection: str | None = None
) -> dict[str, tuple[str, int | None]]:
    """Registry band -> (asset key, 1-based band index in the file or None).

    The key: the collection's declared key (registry ``SourceConvention.asset_keys``), the
    PC key, the Earth Search key, a single-band ``eo:bands`` name, then a multi-band asset
    listing the band (a Landsat-style stack, one asset for all bands). The index: the band's
    position in the asset's band list when that lists several bands, else None (the file
    tells at read time)."""
    out: dict[str, tuple[str, int | None]] = {}
    lower = {k.lower(): k for k in assets}
    conv = source_convention(collection)
    declared = dict(conv.asset_keys) if conv is not None else {}

    def found(b: Any, key: str) -> None:
        entries = _band_list(assets[key])
        out[b.name] = (key, _index_in(entries, b) if len(entries) > 1 else None)

    for b in m.bands:
        key = declared.get(b.name)
        if key is not None and key in assets:
            found(b, key)
            continue
        for cand in (b.asset_key, b.es_asset_key, b.name):
            if cand and cand in assets:
                found(b, cand)
                break
            if cand and cand.lower() in lower:
                found(b, lower[cand.lower()])
                break
        else:
            for key, a in assets.items():
                names = _eo_band_names(a)
                if names == [b.name] and not key.endswith("-jp2"):
                    found(b, key)
                    break
            else:
                for key, a in sorted(assets.items()):
                    entries = _band_list(a)
                    if len(entries) < 2 or _is_rendering(key, a):
                        continue
                    idx = _index_in(entries, b)
                    if idx is not None:
                        out[b.name] = (key, idx)
                        break
    if m.name == "S2L2A":
        for cand in (m.extra.get("scl_asset"), m.extra.get("es_scl_asset")):
            if cand and cand in assets:
                out[SCL_BAND] = (cand, None)
                break
    if m.name in ("S1GRD", "S1RTC"):
        for pol in SAR_POLARIZATIONS:
            if pol not in out and pol.lower() in assets:
                out[pol] = (pol.lower(), None)
    return out


_NBASELINE_RE = re.compile(r"_N(\d{2})(\d{2})[_.]")
_RORBIT_RE = re.compile(r"_R(\d{3})_")
_MGRS_RE = re.compile(r"(?:^|_)T?(\d{1,2}[C-X][A-Z]{2})(?:_|$)")


def _raster_band(asset: Mapping[str, Any], band_index: int | None = None) -> dict[str, Any]:
    """A band's nodata/scale/offset from STAC 1.0 ``raster:bands`` or STAC 1.1 ``bands``
    (the ``band_index``-th entry of a multi-band asset, else the first).

    APIs serving STAC 1.1 (and pystac migrating on read) move ``raster:bands`` into the
    common ``bands`` list with ``raster:``-prefixed fields; both spellings mean the same.
    """
    i = (band_index or 1) - 1
    legacy = asset.get("raster:bands")
    if legacy:
        entry = legacy[i] if i < len(legacy) else legacy[0]
        return dict(entry) if isinstance(entry, Mapping) else {}
    bands = asset.get("bands") or [{}]
    entry = bands[i] if i < len(bands) else bands[0]
    first = entry if isinstance(entry, Mapping) else {}
    out = {k.removeprefix("raster:"): v for k, v in first.items()}
    for k in ("nodata", "raster:scale", "raster:offset"):  # asset-level in STAC 1.1
        if k in asset:
            out.setdefault(k.removeprefix("raster:"), asset[k])
    return out


def _s2_published(
    scale: float | None, offset: float | None, baseline: str | None, props: Mapping[str, Any]
) -> tuple[float, float]:
    """What a Sentinel-2 DN of this item means, ``reflectance = DN * scale + offset``.

    The asset's ``raster:bands`` when given, else ESA's rule (the -0.1 offset from processing
    baseline 04.00 on). Earth Search v1 items with ``earthsearch:boa_offset_applied: true``
    have had the offset removed from their DN but still declare it: their offset is 0. The
    plan records the result, and the build harmonises every item onto the corpus convention
    (``schemas.modalities.S2_STORED_OFFSET_DN``) from it.
    """
    sc, off = s2_reflectance_params(scale, offset, baseline)
    if props.get("earthsearch:boa_offset_applied") is True:
        off = 0.0
    return sc, off


def _processing_baseline(props: Mapping[str, Any], hrefs: Iterable[str]) -> str | None:
    for k in ("s2:processing_baseline", "processing:version"):
        if props.get(k):
            return str(props[k])
    for text in [str(props.get("s2:product_uri", "")), *hrefs]:
        m = _NBASELINE_RE.search(text)
        if m:
            return f"{m.group(1)}.{m.group(2)}"
    return None


def _mgrs_tile(props: Mapping[str, Any], item_id: str) -> str | None:
    if props.get("s2:mgrs_tile"):
        return str(props["s2:mgrs_tile"])
    code = props.get("grid:code")
    if isinstance(code, str) and code.startswith("MGRS-"):
        return code[5:]
    if (
        props.get("mgrs:utm_zone")
        and props.get("mgrs:latitude_band")
        and props.get("mgrs:grid_square")
    ):
        return f"{int(props['mgrs:utm_zone']):02d}{props['mgrs:latitude_band']}{props['mgrs:grid_square']}"
    m = _MGRS_RE.search(item_id)
    return m.group(1).rjust(5, "0") if m else None


def _maybe_float(v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f


HrefRewriter = Callable[[str], str]


def item_from_stac(
    item: pystac.Item | Mapping[str, Any],
    *,
    base_href: str | None = None,
    rewrite_s3: bool = True,
    signer: HrefRewriter | None = None,
) -> SourceItem:
    """Map a STAC item (pystac or its dict) to a :class:`SourceItem`.

    Bands are keyed by registry name using the registry's asset keys per provider; ``proj``
    comes from ``proj:epsg`` or ``proj:code`` with asset-level values overriding item-level
    ones; relative hrefs are made absolute against ``base_href`` (the item's self href),
    ``s3://`` hrefs rewritten to https when ``rewrite_s3``, then ``signer`` applied (e.g.
    Planetary Computer SAS signing). GRD items get no EPSG and ``needs_gcps`` whatever their
    ``proj:*`` claims, because their pixels are in radar geometry.

    Catalogs are third-party input: a malformed item raises :class:`ItemError` with a reason
    code (never a bare ``TypeError`` from deep inside), so a source can skip it and go on.
    """
    if isinstance(item, pystac.Item):
        raw_id: Any = item.id
    elif isinstance(item, Mapping):
        raw_id = item.get("id")
    else:
        raise ItemError("not_an_item", f"a STAC item must be a JSON object, got {_kind(item)}")
    item_id = str(raw_id) if isinstance(raw_id, (str, int)) and str(raw_id) else None
    try:
        return _item_from_stac(item, base_href, rewrite_s3, signer)
    except ItemError as err:
        err.item_id = err.item_id or item_id
        raise
    except SourceError as err:  # e.g. a signer that cannot sign
        raise ItemError("malformed", f"item {item_id!r}: {err}", item_id) from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as err:
        raise ItemError(
            "malformed", f"item {item_id!r} is malformed: {type(err).__name__}: {err}", item_id
        ) from None


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _item_from_stac(
    item: pystac.Item | Mapping[str, Any],
    base_href: str | None,
    rewrite_s3: bool,
    signer: HrefRewriter | None,
) -> SourceItem:
    if isinstance(item, pystac.Item):
        base_href = base_href or item.get_self_href()
        d: Mapping[str, Any] = item.to_dict(include_self_link=False, transform_hrefs=False)
        collection = item.collection_id
    else:
        d = item
        collection = d.get("collection")
        links = d.get("links")
        if base_href is None and isinstance(links, list):
            base_href = next(
                (
                    ln.get("href")
                    for ln in links
                    if isinstance(ln, Mapping) and ln.get("rel") == "self"
                ),
                None,
            )
    raw_id = d.get("id")
    if not isinstance(raw_id, (str, int)) or not str(raw_id):
        raise ItemError("not_an_item", f"a STAC item needs an id, got {_kind(raw_id)}")
    item_id = str(raw_id)
    if not collection or not isinstance(collection, str):
        raise ItemError("no_collection", f"item {item_id!r} has no collection", item_id)
    props: Mapping[str, Any] = d.get("properties") or {}
    if not isinstance(props, Mapping):
        raise ItemError(
            "malformed", f"item {item_id!r}: properties is a {_kind(props)}, not an object"
        )
    try:
        dt = parse_datetime(props.get("datetime"))
        start = parse_datetime(props.get("start_datetime"))
        end = parse_datetime(props.get("end_datetime"))
    except (TypeError, ValueError) as err:
        raise ItemError(
            "bad_datetime", f"item {item_id!r} has an unreadable datetime: {err}"
        ) from None
    if dt is None:
        dt = start or end
    if dt is None:
        raise ItemError(
            "bad_datetime", f"item {item_id!r} has neither datetime nor start/end_datetime"
        )
    geom_json = d.get("geometry")
    bbox_json = d.get("bbox")
    if geom_json:
        if not isinstance(geom_json, Mapping):
            raise ItemError(
                "bad_geometry", f"item {item_id!r}: geometry is a {_kind(geom_json)}, not GeoJSON"
            )
        geometry = _geometry(geom_json, item_id)
    elif bbox_json:
        if not isinstance(bbox_json, list) or len(bbox_json) not in (4, 6):
            raise ItemError("bad_geometry", f"item {item_id!r} has no geometry and a bad bbox")
        try:
            geometry = (
                box(*(float(v) for v in bbox_json[:4]))
                if len(bbox_json) == 4
                else box(
                    float(bbox_json[0]),
                    float(bbox_json[1]),
                    float(bbox_json[3]),
                    float(bbox_json[4]),
                )
            )
        except (TypeError, ValueError) as err:
            raise ItemError("bad_geometry", f"item {item_id!r} has a bad bbox: {err}") from None
    else:
        raise ItemError(
            "no_geometry", f"item {item_id!r} has geometry {_kind(geom_json)} and no bbox"
        )
    if geometry.is_empty:
        raise ItemError("bad_geometry", f"item {item_id!r} has an empty geometry")
    if not geometry.is_valid:
        geometry = shapely.make_valid(geometry)
    bbox = tuple(float(x) for x in geometry.bounds)

    m = modality_for_collection(collection)
    gcps = collection in GCP_COLLECTIONS
    item_epsg = None if gcps else _proj_epsg(props)
    raw_assets: Mapping[str, Mapping[str, Any]] = d.get("assets") or {}
    _check_assets(raw_assets, item_id)
    assets: dict[str, SourceAsset] = {}
    s2 = m is not None and m.name in ("S2L2A", "S2L1C")
    baseline = _processing_baseline(props, (str(a.get("href", "")) for a in raw_assets.values()))
    if m is not None:
        for band, (key, band_index) in _band_asset_keys(m, raw_assets, collection).items():
            a = raw_assets[key]
            href = _absolute(str(a["href"]), base_href)
            if rewrite_s3:
                href = s3_to_https(href, d, a)
            if signer is not None:
                href = signer(href)
            epsg = None if gcps else (_proj_epsg(a) or item_epsg)
            transform = (
                None if gcps else _floats(a.get("proj:transform") or props.get("proj:transform"), 6)
            )
            shp = None if gcps else _floats(a.get("proj:shape") or props.get("proj:shape"), 2)
            rb = _raster_band(a, band_index)
            nodata = _maybe_float(rb.get("nodata"))
            if nodata is None and a.get("nodata") is not None:
                nodata = _maybe_float(a.get("nodata"))
            scale, offset = _maybe_float(rb.get("scale")), _maybe_float(rb.get("offset"))
            if s2 and band != SCL_BAND:
                scale, offset = _s2_published(scale, offset, baseline, props)
            assets[band] = SourceAsset(
                key=key,
                href=href,
                band=band,
                epsg=epsg,
                transform=transform,
                shape=(int(shp[0]), int(shp[1])) if shp else None,
                nodata=nodata,
                scale=scale,
                offset=offset,
                band_index=band_index,
            )
    cloud = _maybe_float(props.get("eo:cloud_cover"))
    platform = props.get("platform")
    orbit = props.get("sat:orbit_state")
    rel = props.get("sat:relative_orbit")
    if rel is None and collection.startswith("sentinel-2"):
        m_rel = _RORBIT_RE.search(
            str(props.get("s2:product_uri", "")) or item_id
        ) or _RORBIT_RE.search(item_id)
        rel = int(m_rel.group(1)) if m_rel else None
    pols = tuple(str(p).upper() for p in props.get("sar:polarizations") or ())
    return SourceItem(
        collection=collection,
        id=item_id,
        datetime=dt,
        geometry=geometry,
        bbox=bbox,  # type: ignore[arg-type]
        modality=m.name if m else None,
        start_datetime=start,
        end_datetime=end,
        cloud_cover=None if cloud is None or math.isnan(cloud) else cloud,
        platform=str(platform).lower() if platform else None,
        orbit_state=str(orbit).lower() if orbit else None,
        relative_orbit=int(rel) if rel is not None else None,
        epsg=item_epsg if item_epsg is not None else _first_asset_epsg(assets),
        needs_gcps=gcps,
        processing_baseline=baseline,
        mgrs_tile=_mgrs_tile(props, item_id) if collection.startswith("sentinel-2") else None,
        polarizations=pols,
        assets=assets,
        self_href=base_href,
        properties=props,
    )


def _check_assets(raw_assets: Any, item_id: str) -> None:
    """Assets must be an object of objects each with a string href (the plan stores them)."""
    if not isinstance(raw_assets, Mapping):
        raise ItemError(
            "bad_assets", f"item {item_id!r}: assets is a {_kind(raw_assets)}, not an object"
        )
    for key, a in raw_assets.items():
        if not isinstance(a, Mapping):
            raise ItemError(
                "bad_assets", f"item {item_id!r}: asset {key!r} is a {_kind(a)}, not an object"
            )
        if not isinstance(a.get("href"), str) or not a["href"]:
            raise ItemError("bad_assets", f"item {item_id!r}: asset {key!r} has no href")


def _geometry(geom_json: Mapping[str, Any], item_id: str) -> BaseGeometry:
    """GeoJSON -> shapely, tolerating empty parts some real items carry (PC S1 EW scenes)."""
    try:
        if geom_json.get("type") == "MultiPolygon":
            parts = [p for p in geom_json.get("coordinates") or [] if p and p[0]]
            geom_json = {"type": "MultiPolygon", "coordinates": parts}
        return shape(geom_json)
    except Exception as err:  # shapely raises several types for malformed GeoJSON
        raise ItemError(
            "bad_geometry", f"item {item_id!r} has an unreadable geometry: {err}"
        ) from None


def _first_asset_epsg(assets: Mapping[str, SourceAsset]) -> int | None:
    for a in assets.values():
        if a.epsg is not None:
            return a.epsg
    return None
