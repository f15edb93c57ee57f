"""Google Earth Engine as a source: catalog search mapped to the item model, pixels by grid.

Earth Engine collection ids come from the registry's Earth Engine conventions
(``schemas.modalities.EARTH_ENGINE``), keyed here by the STAC ids the plan uses; image
metadata (``bands`` with ``crs``/``crs_transform``/``dimensions``, ``system:time_start``,
``system:footprint``, mission properties) is mapped to :class:`SourceItem` with the same
canonical band names as STAC sources. Hrefs are ``ee://<image id>`` with the Earth Engine band
id as the asset key; the build reads them with ``ee.data.computePixels`` directly on the
sample's UTM grid (:func:`pixel_grid`, :func:`read_pixels`), so Earth Engine resamples
server-side with the modality's rule (bilinear / bicubic where Earth Engine offers it,
SAR in linear power), within the quotas of :mod:`pipeline.ee_quota`.

Credentials come from Earth Engine's standard mechanisms (``earthengine authenticate``, or a
service-account key in ``GOOGLE_APPLICATION_CREDENTIALS``) and are never written anywhere.
``ee`` is imported lazily, only when a real client is built. The tests point that real
client at a local stand-in of the REST API (``tests/pipeline/sources/ee_kit.py``); a few
planning tests still replay a *recorded* ``getInfo()`` answer through :class:`EeClient`.

Note: Earth Engine's ``COPERNICUS/S1_GRD`` is already orthorectified (terrain-corrected,
in dB, in UTM), so its items are not flagged ``needs_gcps``; what S1GRD holds when it comes
from Earth Engine is said in the registry (``EARTH_ENGINE["S1GRD"].holds``).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
from shapely.geometry import Polygon, box, shape
from shapely.geometry.base import BaseGeometry

from terraloom.pipeline.ee_quota import (
    EeRequestConfig,
    EeRequestError,
    call_with_retries,
    request_slot,
    split_request,
)
from terraloom.pipeline.sources.base import (
    SCL_BAND,
    Search,
    Source,
    SourceAsset,
    SourceError,
    SourceItem,
    matches_query,
    modality_for_collection,
)
from terraloom.schemas.modalities import (
    EARTH_ENGINE,
    S2_BOA_OFFSET,
    S2_DN_SCALE,
    EarthEngineConvention,
    Modality,
    Resampling,
    ee_to_corpus,
    get_modality,
)
from terraloom.storage.redact import redact


@dataclass(frozen=True)
class EeCollection:
    """How one STAC collection is served by Earth Engine (from the registry's conventions)."""

    ee_id: str
    #: canonical band name -> Earth Engine band id
    bands: Mapping[str, str]
    kind: str  # "s2", "s1", "dem", "lulc"
    #: Earth Engine property holding cloud cover percent, if any
    cloud_property: str | None = None
    convention: EarthEngineConvention | None = None


_KINDS = {"S2L2A": "s2", "S2L1C": "s2", "S1GRD": "s1", "DEM": "dem", "LULC": "lulc"}

#: STAC collection id -> its Earth Engine rendition (``schemas.modalities.EARTH_ENGINE``).
EE_COLLECTIONS: dict[str, EeCollection] = {
    stac_id: EeCollection(
        conv.collection, dict(conv.bands), _KINDS[conv.modality], conv.cloud_property, conv
    )
    for stac_id, conv in EARTH_ENGINE.items()
}


@dataclass(frozen=True)
class ImageListing:
    """``list_images``: the images of ``ee_id`` over a lon/lat ``bbox`` between ``start`` and
    ``end`` (Earth Engine date strings; ``None``: any time), at most ``limit``."""

    ee_id: str
    bbox: tuple[float, float, float, float]
    start: str | None
    end: str | None
    limit: int


@dataclass(frozen=True)
class PixelRequest:
    """``compute_pixels``: ``bands`` of ``image_id`` on ``grid`` (Earth Engine's PixelGrid).

    ``resample`` is Earth Engine's ``Image.resample`` mode (None: its default, nearest);
    ``to_power`` asks for ``10 ** (value / 10)`` before resampling (dB bands); ``fill``
    replaces masked pixels.
    """

    image_id: str
    bands: Sequence[str]
    grid: Mapping[str, Any]
    resample: str | None = None
    to_power: bool = False
    fill: float | None = None


class EeClient(Protocol):
    """The two calls terraloom makes to Earth Engine (so tests can replay recorded answers).

    ``compute_pixels`` answers (height, width) with one field per band (the ``ee`` client's
    NUMPY_NDARRAY) or a plain (height, width, band) array.
    """

    def list_images(self, q: ImageListing) -> list[dict[str, Any]]: ...

    def compute_pixels(self, r: PixelRequest) -> Any: ...


def _credentials_present() -> bool:
    """Whether Earth Engine could find credentials, checked without touching the network:
    a service-account key or user credentials named by ``GOOGLE_APPLICATION_CREDENTIALS``,
    or the file ``earthengine authenticate`` writes."""
    if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") or os.environ.get("EE_SERVICE_ACCOUNT_KEY"):
        return True
    try:
        import ee

        path = ee.oauth.get_credentials_path()
    except Exception:
        return False
    return os.path.exists(path)


_LN10_OVER_10 = math.log(10.0) / 10.0


class _LiveClient:
    """The real Earth Engine client (needs credentials and network).

    Credentials come from the standard mechanisms only (``ee.Initialize``'s persistent
    credentials: ``earthengine authenticate``, or application default credentials such as
    a service-account key in ``GOOGLE_APPLICATION_CREDENTIALS``); terraloom never reads,
    copies or writes them. The ``ee`` client keeps one global state per process, so one
    process talks to one endpoint and project (:func:`live_client` caches it).
    """

    def __init__(self, project: str | None = None, config: EeRequestConfig | None = None) -> None:
        try:
            import ee
        except ImportError:
            raise SourceError(
                "Earth Engine needs the `earthengine-api` package: pip install 'terraloom[ee]'"
            ) from None
        if not _credentials_present():
            raise SourceError(
                "Earth Engine credentials not found: run `earthengine authenticate` "
                "(or set GOOGLE_APPLICATION_CREDENTIALS to a service-account key) and retry"
            )
        cfg = config or EeRequestConfig(high_volume=False)
        project = project or cfg.project or os.environ.get("EE_PROJECT")
        try:
            ee.Initialize(project=project, url=cfg.endpoint)
            # every attempt is one HTTP request: the retries are ours (ee_quota)
            ee.data.setMaxRetries(0)
            ee.data.setDeadline(int(cfg.timeout_s * 1000))
        except Exception as err:  # ee raises EEException and google.auth errors
            raise SourceError(
                f"Earth Engine initialisation failed: {redact(_first_line(err))}. "
                "Run `earthengine authenticate` and pass --ee-project"
            ) from None
        self.ee = ee

    def list_images(self, q: ImageListing) -> list[dict[str, Any]]:
        ee = self.ee
        col = ee.ImageCollection(q.ee_id).filterBounds(
            ee.Geometry.Rectangle(list(q.bbox), "EPSG:4326", False)
        )
        if q.start is not None and q.end is not None:
            col = col.filterDate(q.start, q.end)
        return list(col.limit(q.limit).getInfo().get("features", []))

    def compute_pixels(self, r: PixelRequest) -> Any:
        ee = self.ee
        image = ee.Image(r.image_id).select(list(r.bands))
        if r.to_power:  # 10 ** (dB / 10), computed on the native grid, before resampling
            image = image.multiply(_LN10_OVER_10).exp()
        if r.resample is not None:
            image = image.resample(r.resample)
        if r.fill is not None:
            image = image.unmask(r.fill, False)
        request = {"expression": image, "fileFormat": "NUMPY_NDARRAY", "grid": dict(r.grid)}
        return ee.data.computePixels(request)


_CLIENTS: dict[tuple[str | None, str | None, float], _LiveClient] = {}
_CLIENTS_LOCK = threading.Lock()


def live_client(config: EeRequestConfig) -> EeClient:
    """The process's Earth Engine client for ``config`` (initialised once per worker)."""
    key = (config.endpoint, config.project, config.timeout_s)
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            client = _CLIENTS[key] = _LiveClient(config.project, config)
        return client


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _ms_to_dt(ms: Any) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000.0, tz=UTC)


def _footprint(props: Mapping[str, Any], bands: Sequence[Mapping[str, Any]]) -> BaseGeometry:
    fp = props.get("system:footprint")
    if fp:
        if fp.get("type") == "LinearRing":
            return Polygon(fp["coordinates"])
        return shape(fp)
    raise SourceError(f"Earth Engine image without system:footprint ({props.get('system:index')})")


def item_from_ee(info: Mapping[str, Any], collection: str) -> SourceItem:
    """Map one Earth Engine image description (``ee.Image.getInfo()``) to a SourceItem."""
    spec = EE_COLLECTIONS.get(collection)
    if spec is None:
        raise SourceError(
            f"collection {collection!r} has no Earth Engine mapping (have {sorted(EE_COLLECTIONS)})"
        )
    props: Mapping[str, Any] = info.get("properties") or {}
    image_id = str(info["id"])
    bands = {b["id"]: b for b in info.get("bands") or []}
    geometry = _footprint(props, list(bands.values()))
    assets: dict[str, SourceAsset] = {}
    for name, ee_band in spec.bands.items():
        b = bands.get(ee_band)
        if b is None:
            continue
        crs = str(b.get("crs", ""))
        epsg = int(crs.split(":")[1]) if crs.upper().startswith("EPSG:") else None
        tf = b.get("crs_transform")
        dims = b.get("dimensions")
        s2_dn = spec.kind == "s2" and name != SCL_BAND
        assets[name] = SourceAsset(
            key=ee_band,
            href=f"ee://{image_id}",
            band=name,
            epsg=epsg,
            transform=tuple(float(x) for x in tf[:6]) if tf else None,
            shape=(int(dims[1]), int(dims[0]))
            if dims
            else None,  # EE dimensions are (width, height)
            # what the build hands on: S2 DN already moved onto the corpus convention
            # (ee_to_corpus), so reflectance = DN / 10000 - 0.1 whatever the baseline
            scale=1 / S2_DN_SCALE if s2_dn else None,
            offset=S2_BOA_OFFSET if s2_dn else None,
        )
    start = props.get("system:time_start")
    end = props.get("system:time_end")
    dt = _ms_to_dt(start) if start is not None else None
    if dt is None:
        raise SourceError(f"Earth Engine image {image_id} has no system:time_start")
    cloud = props.get(spec.cloud_property) if spec.cloud_property else None
    platform = None
    orbit = None
    rel = None
    pols: tuple[str, ...] = ()
    mgrs = None
    baseline = None
    if spec.kind == "s2":
        platform = str(props.get("SPACECRAFT_NAME", "")).lower() or None
        mgrs = props.get("MGRS_TILE")
        baseline = props.get("PROCESSING_BASELINE")
        orbit = str(props.get("SENSING_ORBIT_DIRECTION", "")).lower() or None
        rel = props.get("SENSING_ORBIT_NUMBER")
    elif spec.kind == "s1":
        num = props.get("platform_number")
        platform = f"sentinel-1{str(num).lower()}" if num else None
        orbit = str(props.get("orbitProperties_pass", "")).lower() or None
        rel = props.get("relativeOrbitNumber_start")
        pols = tuple(str(p).upper() for p in props.get("transmitterReceiverPolarisation") or ())
    start_dt: datetime | None = None
    end_dt: datetime | None = None
    if spec.kind == "lulc":  # annual maps: the item describes [time_start, time_end)
        start_dt, end_dt = dt, (_ms_to_dt(end) if end is not None else None)
    m = modality_for_collection(collection)
    epsgs = {a.epsg for a in assets.values() if a.epsg is not None}
    return SourceItem(
        collection=collection,
        id=image_id,
        datetime=dt,
        geometry=geometry,
        bbox=tuple(geometry.bounds),  # type: ignore[arg-type]
        modality=m.name if m else None,
        start_datetime=start_dt,
        end_datetime=end_dt,
        cloud_cover=float(cloud) if cloud is not None else None,
        platform=platform,
        orbit_state=orbit,
        relative_orbit=int(rel) if rel is not None else None,
        epsg=min(epsgs) if epsgs else None,
        needs_gcps=False,  # EE's S1_GRD is orthorectified
        processing_baseline=str(baseline) if baseline else None,
        mgrs_tile=str(mgrs) if mgrs else None,
        polarizations=pols,
        assets=assets,
        self_href=f"ee://{image_id}",
        properties=props,
    )


def pixel_grid(epsg: int, transform: Sequence[float], width: int, height: int) -> dict[str, Any]:
    """The ``grid`` of an ``ee.data.computePixels`` request for a sample's UTM grid."""
    a, b, c, d, e, f = (float(x) for x in transform[:6])
    return {
        "dimensions": {"width": int(width), "height": int(height)},
        "affineTransform": {
            "scaleX": a,
            "shearX": b,
            "translateX": c,
            "shearY": d,
            "scaleY": e,
            "translateY": f,
        },
        "crsCode": f"EPSG:{int(epsg)}",
    }


class EarthEngineSource(Source):
    """Earth Engine catalog as a source; ``client`` is injected in tests (recorded answers)."""

    name = "ee"

    def __init__(
        self,
        client: EeClient | None = None,
        *,
        project: str | None = None,
        limit: int = 5000,
        config: EeRequestConfig | None = None,
    ) -> None:
        # planning lists catalogs: the standard endpoint unless the config names another
        cfg = config or EeRequestConfig(high_volume=False)
        self.client: EeClient = client if client is not None else _LiveClient(project, cfg)
        self.limit = limit

    def collections(self) -> list[str]:
        return sorted(EE_COLLECTIONS)

    def _search(self, s: Search) -> list[SourceItem]:
        collection, geometry, time_range, query = s.collection, s.geometry, s.time_range, s.query
        spec = EE_COLLECTIONS.get(collection)
        if spec is None:
            return []
        start = end = None
        if time_range is not None:
            start = time_range[0].strftime("%Y-%m-%dT%H:%M:%S")
            end = time_range[1].strftime("%Y-%m-%dT%H:%M:%S")
        bbox = tuple(float(v) for v in geometry.bounds)
        try:
            listing = ImageListing(spec.ee_id, bbox, start, end, self.limit)  # type: ignore[arg-type]
            infos = self.client.list_images(listing)
        except SourceError:
            raise
        except Exception as err:  # EE raises EEException / HttpError
            raise SourceError(f"Earth Engine search of {spec.ee_id} failed: {err}") from None
        items = [item_from_ee(info, collection) for info in infos]
        out = []
        for it in items:
            if not it.geometry.intersects(geometry if not geometry.is_empty else box(*bbox)):
                continue
            if (
                time_range is not None
                and not (time_range[0] <= it.datetime <= time_range[1])
                and spec.kind in ("s1", "s2")
            ):
                continue
            if query and not matches_query(_stac_like(it), query):
                continue
            out.append(it)
        return out

    def fetch_pixels(
        self,
        item: SourceItem,
        bands: Sequence[str],
        epsg: int,
        transform: Sequence[float],
        width: int,
        height: int,
        config: EeRequestConfig | None = None,
    ) -> np.ndarray:
        """Corpus values (band, y, x) of canonical ``bands`` of an item on a sample grid
        (server-side resampling; see :func:`read_pixels`)."""
        conv = EARTH_ENGINE.get(item.collection)
        if conv is None:
            raise SourceError(f"{item.collection} has no Earth Engine convention")
        keys = [item.assets[b].key for b in bands]
        grid = pixel_grid(epsg, transform, width, height)
        try:
            return read_pixels(self.client, item.id, conv, list(bands), keys, grid, config)
        except EeRequestError as err:
            raise SourceError(f"Earth Engine computePixels of {item.id} failed: {err}") from None


def ee_resampling(m: Modality, band: str) -> str | None:
    """Earth Engine's ``Image.resample`` mode for a band (None: Earth Engine's default,
    nearest neighbour, for classes and the SCL classification; mode is not offered)."""
    if band == SCL_BAND or m.resampling in (Resampling.NEAREST, Resampling.MODE):
        return None
    return "bicubic" if m.resampling is Resampling.CUBIC else "bilinear"


#: Bytes per value assumed when sizing a request: computed answers (resampled, dB to power)
#: can come back as float64, so requests are sized for the widest type.
ANSWER_BYTES_PER_VALUE = 8


def _as_bands(answer: Any, keys: Sequence[str], height: int, width: int) -> np.ndarray:
    arr = np.asarray(answer)
    if arr.dtype.names:  # NUMPY_NDARRAY: a structured (h, w) array, one field per band
        missing = [k for k in keys if k not in arr.dtype.names]
        if missing:
            raise SourceError(f"Earth Engine answered without bands {missing}")
        out = np.stack([arr[k] for k in keys])
    elif arr.ndim == 3:
        out = np.moveaxis(arr, -1, 0)
    else:
        out = arr.reshape((1, *arr.shape))
    if out.shape != (len(keys), height, width):
        raise SourceError(
            f"Earth Engine answered {out.shape[1:]} px for a {height} x {width} request"
        )
    return out


def read_pixels(
    client: EeClient,
    image_id: str,
    convention: EarthEngineConvention,
    bands: Sequence[str],
    keys: Sequence[str],
    grid: Mapping[str, Any],
    config: EeRequestConfig | None = None,
    *,
    stats: dict[str, float] | None = None,
    sleep: Any = time.sleep,
) -> np.ndarray:
    """Pixels of ``bands`` (Earth Engine ids ``keys``) of one image on ``grid`` as float32
    corpus values (band, y, x), NaN for nodata.

    Requests are split under ``config.max_request_bytes`` (bands, then rows), each runs in
    one of the worker's ``max_concurrent`` slots, with ``timeout_s`` and retries of 429/5xx
    (:mod:`pipeline.ee_quota`); the resampling is the modality's where Earth Engine
    offers it. Raises :class:`EeRequestError` when a request fails for good.
    """
    cfg = config or EeRequestConfig()
    m = get_modality(convention.modality)
    width = int(grid["dimensions"]["width"])
    height = int(grid["dimensions"]["height"])
    out = np.full((len(bands), height, width), np.nan, np.float32)
    # one family per resampling mode (the SCL of S2 is nearest, its reflectance bilinear)
    families: dict[str | None, list[int]] = {}
    for i, b in enumerate(bands):
        families.setdefault(ee_resampling(m, b), []).append(i)
    slot = request_slot(cfg.max_concurrent)
    counters = stats if stats is not None else {}
    for mode, idx in families.items():
        parts = split_request(
            len(idx), width, height, ANSWER_BYTES_PER_VALUE, cfg.max_request_bytes
        )
        for part in parts:
            sel = [idx[j] for j in part.bands]
            sub_keys = [keys[j] for j in sel]
            sub_grid = _row_grid(grid, part.row0, part.row1)

            def call(
                sub_keys: list[str] = sub_keys,
                sub_grid: dict[str, Any] = sub_grid,
                mode: str | None = mode,
            ) -> Any:
                with slot:
                    counters["ee_requests"] = counters.get("ee_requests", 0.0) + 1.0
                    return client.compute_pixels(
                        PixelRequest(
                            image_id,
                            sub_keys,
                            sub_grid,
                            resample=mode,
                            to_power=convention.db,
                            fill=convention.fill,
                        )
                    )

            def retried(attempt: int, exc: BaseException) -> None:
                counters["ee_retries"] = counters.get("ee_retries", 0.0) + 1.0

            answer = call_with_retries(call, cfg, sleep=sleep, on_retry=retried)
            values = _as_bands(answer, sub_keys, part.height, width)
            for j, band_i in enumerate(sel):
                out[band_i, part.row0 : part.row1] = ee_to_corpus(
                    convention, bands[band_i], values[j]
                )
    return out


def _row_grid(grid: Mapping[str, Any], row0: int, row1: int) -> dict[str, Any]:
    """The grid of rows [row0, row1) of ``grid`` (same pixels, shifted origin)."""
    g = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in grid.items()}
    t = g["affineTransform"]
    t["translateX"] = float(t["translateX"]) + row0 * float(t.get("shearX", 0.0))
    t["translateY"] = float(t["translateY"]) + row0 * float(t["scaleY"])
    g["dimensions"] = {"width": int(grid["dimensions"]["width"]), "height": row1 - row0}
    return g


def _stac_like(item: SourceItem) -> dict[str, Any]:
    """The STAC property names a ``query`` may use, for Earth Engine items."""
    return {
        "eo:cloud_cover": item.cloud_cover,
        "platform": item.platform,
        "sat:orbit_state": item.orbit_state,
    }
