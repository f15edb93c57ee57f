"""Google Earth Engine as a source: catalog search mapped to the item model, pixels by grid.

Earth Engine collection ids are mapped from the STAC ids the plan uses; image metadata
(``bands`` with ``crs``/``crs_transform``/``dimensions``, ``system:time_start``,
``system:footprint``, mission properties) is mapped to :class:`SourceItem` with the same
canonical band names as STAC sources. Hrefs are ``ee://<image id>`` with the Earth Engine band
id as the asset key; pixels are later fetched with ``ee.data.computePixels`` directly on the
sample's UTM grid (:func:`pixel_grid`), so Earth Engine does the resampling server-side.

Earth Engine needs credentials (``earthengine authenticate`` or a service account), which the
test machines do not have: tests inject a *recorded* client (canned JSON of a real
``ImageCollection.getInfo()`` answer) through the small :class:`EeClient` protocol. That is
the one mock in the planning tests, and it stands in only for Google's servers.
``ee`` is imported lazily, only when a real client is built.

Note: Earth Engine's ``COPERNICUS/S1_GRD`` is already orthorectified (terrain-corrected,
in dB, in UTM), so its items are not flagged ``needs_gcps`` and their values are dB.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from shapely.geometry import Polygon, box, shape
from shapely.geometry.base import BaseGeometry

from terraloom.pipeline.sources.base import (
    SCL_BAND,
    Source,
    SourceAsset,
    SourceError,
    SourceItem,
    TimeRange,
    matches_query,
    modality_for_collection,
)

_S2_EE_BANDS = {
    "B01": "B1",
    "B02": "B2",
    "B03": "B3",
    "B04": "B4",
    "B05": "B5",
    "B06": "B6",
    "B07": "B7",
    "B08": "B8",
    "B8A": "B8A",
    "B09": "B9",
    "B10": "B10",
    "B11": "B11",
    "B12": "B12",
}


@dataclass(frozen=True)
class EeCollection:
    """How one STAC collection is served by Earth Engine."""

    ee_id: str
    #: canonical band name -> Earth Engine band id
    bands: Mapping[str, str]
    kind: str  # "s2", "s1", "dem", "lulc"
    #: Earth Engine property holding cloud cover percent, if any
    cloud_property: str | None = None


EE_COLLECTIONS: dict[str, EeCollection] = {
    "sentinel-2-l2a": EeCollection(
        "COPERNICUS/S2_SR_HARMONIZED",
        {**{k: v for k, v in _S2_EE_BANDS.items() if k != "B10"}, SCL_BAND: "SCL"},
        "s2",
        "CLOUDY_PIXEL_PERCENTAGE",
    ),
    "sentinel-2-l1c": EeCollection(
        "COPERNICUS/S2_HARMONIZED", dict(_S2_EE_BANDS), "s2", "CLOUDY_PIXEL_PERCENTAGE"
    ),
    "sentinel-1-grd": EeCollection("COPERNICUS/S1_GRD", {"VV": "VV", "VH": "VH"}, "s1"),
    "cop-dem-glo-30": EeCollection("COPERNICUS/DEM/GLO30", {"elevation": "DEM"}, "dem"),
    # Esri 10 m annual land cover, community catalog (awesome-gee-community-catalog).
    "io-lulc-9-class": EeCollection(
        "projects/sat-io/open-datasets/landcover/ESRI_Global-LULC_10m_TS", {"class": "b1"}, "lulc"
    ),
}


class EeClient(Protocol):
    """The two calls terraloom makes to Earth Engine (so tests can replay recorded answers)."""

    def list_images(
        self,
        ee_id: str,
        bbox: tuple[float, float, float, float],
        start: str | None,
        end: str | None,
        limit: int,
    ) -> list[dict[str, Any]]: ...

    def compute_pixels(
        self, image_id: str, bands: Sequence[str], grid: Mapping[str, Any]
    ) -> Any: ...


def _credentials_present() -> bool:
    """Whether Earth Engine could find credentials, checked without touching the network."""
    if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") or os.environ.get("EE_SERVICE_ACCOUNT_KEY"):
        return True
    try:
        import ee

        path = ee.oauth.get_credentials_path()
    except Exception:
        return False
    return os.path.exists(path)


class _LiveClient:
    """The real Earth Engine client (needs credentials and network)."""

    def __init__(self, project: str | None = None) -> None:
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
        try:
            ee.Initialize(project=project or os.environ.get("EE_PROJECT"))
        except Exception as err:  # ee raises EEException and google.auth errors
            raise SourceError(
                f"Earth Engine initialisation failed: {err}. Run `earthengine authenticate` and pass --ee-project"
            ) from None
        self.ee = ee

    def list_images(
        self,
        ee_id: str,
        bbox: tuple[float, float, float, float],
        start: str | None,
        end: str | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        ee = self.ee
        col = ee.ImageCollection(ee_id).filterBounds(
            ee.Geometry.Rectangle(list(bbox), "EPSG:4326", False)
        )
        if start is not None and end is not None:
            col = col.filterDate(start, end)
        return list(col.limit(limit).getInfo().get("features", []))

    def compute_pixels(self, image_id: str, bands: Sequence[str], grid: Mapping[str, Any]) -> Any:
        ee = self.ee
        request = {
            "expression": ee.Image(image_id).select(list(bands)),
            "fileFormat": "NUMPY_NDARRAY",
            "grid": dict(grid),
        }
        return ee.data.computePixels(request)


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
        assets[name] = SourceAsset(
            key=ee_band,
            href=f"ee://{image_id}",
            band=name,
            epsg=epsg,
            transform=tuple(float(x) for x in tf[:6]) if tf else None,
            shape=(int(dims[1]), int(dims[0]))
            if dims
            else None,  # EE dimensions are (width, height)
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
        self, client: EeClient | None = None, *, project: str | None = None, limit: int = 5000
    ) -> None:
        self.client: EeClient = client if client is not None else _LiveClient(project)
        self.limit = limit

    def collections(self) -> list[str]:
        return sorted(EE_COLLECTIONS)

    def search(
        self,
        collection: str,
        geometry: BaseGeometry,
        time_range: TimeRange | None,
        query: Mapping[str, Any] | None = None,
    ) -> list[SourceItem]:
        spec = EE_COLLECTIONS.get(collection)
        if spec is None:
            return []
        start = end = None
        if time_range is not None:
            start = time_range[0].strftime("%Y-%m-%dT%H:%M:%S")
            end = time_range[1].strftime("%Y-%m-%dT%H:%M:%S")
        bbox = tuple(float(v) for v in geometry.bounds)
        try:
            infos = self.client.list_images(spec.ee_id, bbox, start, end, self.limit)  # type: ignore[arg-type]
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
    ) -> Any:
        """Pixels of canonical ``bands`` of an item on a sample grid (server-side resampling)."""
        keys = [item.assets[b].key for b in bands]
        try:
            return self.client.compute_pixels(
                item.id, keys, pixel_grid(epsg, transform, width, height)
            )
        except Exception as err:
            raise SourceError(f"Earth Engine computePixels of {item.id} failed: {err}") from None


def _stac_like(item: SourceItem) -> dict[str, Any]:
    """The STAC property names a ``query`` may use, for Earth Engine items."""
    return {
        "eo:cloud_cover": item.cloud_cover,
        "platform": item.platform,
        "sat:orbit_state": item.orbit_state,
    }
