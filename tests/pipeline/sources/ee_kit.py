"""A local stand-in of Earth Engine's REST API, serving the synthetic world, for the real client.

Google's servers cannot be reached from tests, but the real ``ee`` client can be pointed at
any base URL (``ee.Initialize(url=...)``). :class:`EeServer` is an HTTP server on 127.0.0.1
that implements just the endpoints the client calls for ``plan --source ee`` and the build:

- ``GET /$discovery/rest``: the Cloud API discovery document the ``ee`` package ships
  (``ee/tests/cloud_api_discovery_document.json``), so the client builds its resource;
- ``GET .../algorithms``: the algorithm list it also ships (``ee/tests/algorithms.json``);
- ``POST /token``: an OAuth token endpoint, so the client's *standard* credential path
  (application default credentials from ``GOOGLE_APPLICATION_CREDENTIALS``) runs for real;
- ``POST .../value:compute``: ``ImageCollection.load`` + ``filterBounds`` + ``filterDate`` +
  ``limit`` evaluated over Earth Engine descriptions of the world's STAC items;
- ``POST .../image:computePixels``: ``Image.load`` / ``select`` / ``multiply`` / ``exp`` /
  ``resample`` / ``unmask`` evaluated on the world's COGs and warped by GDAL onto the
  requested grid, answered as NPY (what the client's NUMPY_NDARRAY reads).

It serves Earth Engine's conventions, not the STAC ones: Sentinel-2 DN with the
baseline-04.00 offset removed (harmonised), Sentinel-1 GRD in dB; it throttles (429) and
fails (5xx / 4xx) on demand, and records every pixel request (grid size, bands, how many
were in flight at once). The expression evaluator knows only the functions above; anything
else is answered 400, so a change in what terraloom asks shows up as a failing test.
"""

from __future__ import annotations

import io
import json
import math
import threading
import time
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject
from shapely.geometry import box, mapping, shape

from terraloom.schemas.modalities import EARTH_ENGINE, S2_STORED_OFFSET_DN, get_modality

_EE_DIR = Path(__import__("ee").__file__).parent / "tests"
_RESAMPLING = {
    None: Resampling.nearest,
    "bilinear": Resampling.bilinear,
    "bicubic": Resampling.cubic,
}


class EeExprError(Exception):
    """An expression the stand-in does not evaluate (answered 400)."""


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


class _Band:
    """One band of a world image: its COG and how to turn the file's values into what
    Earth Engine serves (harmonised S2 DN, S1 dB)."""

    def __init__(self, href: Path, kind: str, baseline: str | None) -> None:
        self.href = href
        self.kind = kind
        self.baseline = baseline


def _ee_image(
    item: dict[str, Any], base: Path, stac_id: str
) -> tuple[dict[str, Any], dict[str, _Band]]:
    """The Earth Engine description (``getInfo``) of a world STAC item, and its bands."""
    conv = EARTH_ENGINE[stac_id]
    modality = conv.modality
    props = item["properties"]
    ee_id = f"{conv.collection}/{item['id']}"
    m = get_modality(modality)
    stac_keys = {b.name: b.asset_key for b in m.bands}
    if modality == "S2L2A":
        stac_keys["SCL"] = "SCL"
    baseline = None
    if modality.startswith("S2"):
        uri = str(props.get("s2:product_uri", ""))
        nb = next((p for p in uri.split("_") if p.startswith("N") and p[1:].isdigit()), "N0509")
        baseline = f"{nb[1:3]}.{nb[3:5]}"
    bands_doc, bands = [], {}
    for name, ee_band in conv.bands:
        key = stac_keys.get(name)
        asset = item["assets"].get(key) or item["assets"].get(str(key).lower())
        if asset is None:
            continue
        href = (base / asset["href"]).resolve()
        with rasterio.open(href) as ds:
            if ds.crs is not None and ds.transform != Affine.identity():
                crs = f"EPSG:{ds.crs.to_epsg()}"
                tf = list(ds.transform)[:6]
            else:  # GRD: Earth Engine's is orthorectified; its grid is not needed by the build
                crs, tf = "EPSG:4326", None
            doc: dict[str, Any] = {"id": ee_band, "crs": crs, "dimensions": [ds.width, ds.height]}
            if tf is not None:
                doc["crs_transform"] = tf
        bands_doc.append(doc)
        kind = "scl" if name == "SCL" else m.name
        bands[ee_band] = _Band(href, kind, baseline)
    geom = shape(item["geometry"])
    ring = [list(c) for c in geom.exterior.coords] if geom.geom_type == "Polygon" else None
    p: dict[str, Any] = {"system:index": item["id"]}
    p["system:footprint"] = {"type": "LinearRing", "coordinates": ring} if ring else mapping(geom)
    start = props.get("start_datetime") if modality == "LULC" else None
    p["system:time_start"] = _ms(start or props.get("datetime") or props["start_datetime"])
    if modality == "LULC" and props.get("end_datetime"):
        p["system:time_end"] = _ms(props["end_datetime"])
    if modality.startswith("S2"):
        p.update(
            CLOUDY_PIXEL_PERCENTAGE=props.get("eo:cloud_cover", 0.0),
            SPACECRAFT_NAME=props.get("platform"),
            MGRS_TILE=props.get("s2:mgrs_tile"),
            PROCESSING_BASELINE=baseline,
            SENSING_ORBIT_DIRECTION=str(props.get("sat:orbit_state", "descending")).upper(),
            SENSING_ORBIT_NUMBER=props.get("sat:relative_orbit"),
        )
    if modality == "S1GRD":
        p.update(
            orbitProperties_pass=str(props.get("sat:orbit_state", "")).upper(),
            relativeOrbitNumber_start=props.get("sat:relative_orbit"),
            platform_number=str(props.get("platform", "sentinel-1a"))[-1].upper(),
            transmitterReceiverPolarisation=props.get("sar:polarizations", ["VV", "VH"]),
            instrumentMode="IW",
        )
    return {"type": "Image", "id": ee_id, "bands": bands_doc, "properties": p}, bands


class EeWorld:
    """The synthetic world as Earth Engine would serve it: image descriptions per
    collection and each image's bands (files + conventions)."""

    def __init__(self, world_dir: Path) -> None:
        self.images: dict[str, list[dict[str, Any]]] = {}
        self.bands: dict[str, dict[str, _Band]] = {}
        self._cache: dict[Path, tuple[np.ndarray, Any]] = {}
        self._lock = threading.Lock()
        for coll, conv in EARTH_ENGINE.items():
            for path in sorted((world_dir / coll).glob("*/*.json")):
                item = json.loads(path.read_text())
                doc, bands = _ee_image(item, path.parent, coll)
                self.images.setdefault(conv.collection, []).append(doc)
                self.bands[doc["id"]] = bands

    def native(self, band: _Band) -> tuple[np.ndarray, dict[str, Any]]:
        """(values as Earth Engine serves them, float64 with NaN masked; georeferencing)."""
        with self._lock:
            hit = self._cache.get(band.href)
        if hit is None:
            with rasterio.open(band.href) as ds:
                raw = ds.read(1).astype(np.float64)
                nodata = ds.nodata
                geo: dict[str, Any] = {}
                if ds.crs is not None and ds.transform != Affine.identity():
                    geo = {"src_crs": ds.crs, "src_transform": ds.transform}
                else:
                    gcps, gcrs = ds.gcps
                    geo = {"gcps": gcps, "src_crs": gcrs, "SRC_METHOD": "GCP_TPS"}
            if nodata is not None and not math.isnan(nodata):
                raw[raw == nodata] = np.nan
            if band.kind in ("S2L2A", "S2L1C") and band.baseline and float(band.baseline) >= 4:
                raw = raw - S2_STORED_OFFSET_DN  # harmonised: offset removed
                raw[raw <= 0] = np.nan
            elif band.kind == "S1GRD":
                with np.errstate(divide="ignore", invalid="ignore"):
                    raw = np.where(raw > 0, 10.0 * np.log10(raw), np.nan)
            hit = (raw, geo)
            with self._lock:
                self._cache[band.href] = hit
        return hit


class _Image:
    """An image expression: its bands (Earth Engine id, the band's file, read lazily), the
    pixelwise operations applied on the native grid, the resampling mode and fill."""

    def __init__(
        self,
        bands: list[tuple[str, _Band]],
        ops: tuple[Callable[[np.ndarray], np.ndarray], ...] = (),
    ) -> None:
        self.bands = bands
        self.ops = ops
        self.resample: str | None = None
        self.fill: float | None = None

    def derive(self, op: Callable[[np.ndarray], np.ndarray] | None = None) -> _Image:
        out = _Image(list(self.bands), self.ops + ((op,) if op is not None else ()))
        out.resample, out.fill = self.resample, self.fill
        return out


class _Evaluator:
    """Evaluates the serialized expression graph the ``ee`` client sends."""

    def __init__(self, world: EeWorld, expr: dict[str, Any]) -> None:
        self.world = world
        self.values = expr["values"]
        self.result = expr["result"]

    def run(self) -> Any:
        return self.node(self.values[self.result])

    def node(self, n: dict[str, Any]) -> Any:
        if "constantValue" in n:
            return n["constantValue"]
        if "valueReference" in n:
            return self.node(self.values[n["valueReference"]])
        if "arrayValue" in n:
            return [self.node(v) for v in n["arrayValue"]["values"]]
        if "functionInvocationValue" in n:
            f = n["functionInvocationValue"]
            args = {k: self.node(v) for k, v in (f.get("arguments") or {}).items()}
            return self.call(f["functionName"], args)
        raise EeExprError(f"unsupported expression node {sorted(n)}")

    def call(self, name: str, a: dict[str, Any]) -> Any:
        w = self.world
        if name == "ImageCollection.load":
            if a["id"] not in w.images:
                raise EeExprError(f"ImageCollection asset '{a['id']}' not found.")
            return list(w.images[a["id"]])
        if name == "GeometryConstructors.Rectangle":
            return box(*a["coordinates"])
        if name in ("Feature", "Projection"):
            return a.get("geometry", a.get("crs"))
        if name == "DateRange":
            return (_ms(a["start"] + "Z"), _ms(a["end"] + "Z"))
        if name == "Filter.intersects":
            geom = a["rightValue"]
            return lambda img: shape(_poly(img["properties"]["system:footprint"])).intersects(geom)
        if name == "Filter.dateRangeContains":
            lo, hi = a["leftValue"]
            return lambda img: lo <= img["properties"]["system:time_start"] < hi
        if name == "Collection.filter":
            return [img for img in a["collection"] if a["filter"](img)]
        if name == "Collection.limit":
            return a["collection"][: int(a["limit"])]
        if name == "Image.load":
            bands = w.bands.get(a["id"])
            if bands is None:
                raise EeExprError(f"Image asset '{a['id']}' not found.")
            return _Image(list(bands.items()))
        if name == "Image.select":
            img = a["input"]
            have = dict(img.bands)
            missing = [b for b in a["bandSelectors"] if b not in have]
            if missing:
                raise EeExprError(f"Image.select: Pattern '{missing[0]}' did not match any bands.")
            out = img.derive()
            out.bands = [(b, have[b]) for b in a["bandSelectors"]]
            return out
        if name == "Image.constant":
            return float(a["value"])
        if name == "Image.multiply":
            c = a["image2"]
            return a["image1"].derive(lambda x: x * c)
        if name == "Image.exp":
            return a["value"].derive(np.exp)
        if name == "Image.resample":
            img = a["image"].derive()
            img.resample = a.get("mode", "bilinear")
            return img
        if name == "Image.unmask":
            img = a["input"].derive()
            img.fill = float(a["value"])
            return img
        raise EeExprError(f"the stand-in does not evaluate {name}")


def _poly(fp: dict[str, Any]) -> dict[str, Any]:
    if fp.get("type") == "LinearRing":
        return {"type": "Polygon", "coordinates": [fp["coordinates"]]}
    return fp


def _window(
    arr: np.ndarray,
    geo: dict[str, Any],
    dst_crs: CRS,
    dst_tf: Affine,
    h: int,
    w: int,
    pad: int = 16,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The part of a native array around the request grid (warping the whole file for a
    264 px sample would make the stand-in, not the build, the slow part of the tests)."""
    from rasterio.warp import transform as warp_points
    from rasterio.windows import Window

    xs = [dst_tf.c + dst_tf.a * c + dst_tf.b * r for r, c in ((0, 0), (0, w), (h, 0), (h, w))]
    ys = [dst_tf.f + dst_tf.d * c + dst_tf.e * r for r, c in ((0, 0), (0, w), (h, 0), (h, w))]
    if "src_transform" in geo:
        sx, sy = warp_points(dst_crs, geo["src_crs"], xs, ys)
        inv = ~geo["src_transform"]
        cols, rows = zip(*(inv @ (x, y) for x, y in zip(sx, sy)))
    else:  # radar geometry: locate the window by an affine fit of the GCPs
        g = geo["gcps"]
        sx, sy = warp_points(dst_crs, geo["src_crs"], xs, ys)
        A = np.array([[p.x, p.y, 1.0] for p in g])
        rc = np.array([[p.row, p.col] for p in g])
        coef, *_ = np.linalg.lstsq(A, rc, rcond=None)
        pts = np.column_stack([sx, sy, np.ones(4)]) @ coef
        rows, cols = pts[:, 0], pts[:, 1]
        pad = 64
    r0 = max(0, int(math.floor(min(rows))) - pad)
    c0 = max(0, int(math.floor(min(cols))) - pad)
    r1 = min(arr.shape[0], int(math.ceil(max(rows))) + pad)
    c1 = min(arr.shape[1], int(math.ceil(max(cols))) + pad)
    if r1 <= r0 or c1 <= c0:
        return np.full((1, 1), np.nan), {
            **geo,
            **({"src_transform": geo["src_transform"]} if "src_transform" in geo else {}),
        }
    sub = arr[r0:r1, c0:c1]
    if "src_transform" in geo:
        return sub, {**geo, "src_transform": geo["src_transform"] @ Affine.translation(c0, r0)}
    from terraloom.pipeline.readers import replace_gcp

    shifted = [replace_gcp(p, row=p.row - r0, col=p.col - c0) for p in geo["gcps"]]
    _ = Window
    return sub, {**geo, "gcps": shifted}


def render(world: EeWorld, img: _Image, grid: dict[str, Any]) -> np.ndarray:
    """The image on the request grid, as the NPY structured array computePixels answers."""
    dims = grid["dimensions"]
    h, w = int(dims["height"]), int(dims["width"])
    t = grid["affineTransform"]
    dst_tf = Affine(
        t["scaleX"],
        t.get("shearX", 0.0),
        t["translateX"],
        t.get("shearY", 0.0),
        t["scaleY"],
        t["translateY"],
    )
    dst_crs = CRS.from_string(grid["crsCode"])
    out = np.zeros((h, w), dtype=[(n, "<f8") for n, _ in img.bands])
    for name, band in img.bands:
        arr, geo = _window(*world.native(band), dst_crs, dst_tf, h, w)
        for op in img.ops:
            arr = op(arr)
        dst = np.full((h, w), np.nan, np.float64)
        reproject(
            arr,
            dst,
            src_nodata=np.nan,
            dst_nodata=np.nan,
            dst_transform=dst_tf,
            dst_crs=dst_crs,
            resampling=_RESAMPLING[img.resample],
            **geo,
        )
        masked = ~np.isfinite(dst)
        dst[masked] = img.fill if img.fill is not None else 0.0
        out[name] = dst
    return out


class EeServer:
    """The stand-in on 127.0.0.1; ``throttle`` answers the next N pixel requests 429,
    ``fail_images`` answers pixel requests of those image ids with (status, message)."""

    def __init__(self, world_dir: Path, lifetime: float = 300.0) -> None:
        self.world = EeWorld(world_dir)
        self.throttle = 0
        self.fail_images: dict[str, tuple[int, str]] = {}
        self.pixel_requests: list[dict[str, Any]] = []
        self.tokens = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay_s = 0.0
        self._lock = threading.Lock()
        self._deadline = time.monotonic() + lifetime
        kit = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _error(self, code: int, message: str) -> None:
                status = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED"}
                doc = {
                    "error": {
                        "code": code,
                        "message": message,
                        "status": status.get(code, "INTERNAL"),
                    }
                }
                self._send(code, json.dumps(doc).encode())

            def do_GET(self) -> None:
                if self.path.startswith("/$discovery/rest"):
                    return self._send(
                        200, (_EE_DIR / "cloud_api_discovery_document.json").read_bytes()
                    )
                if "/algorithms" in self.path:
                    return self._send(200, (_EE_DIR / "algorithms.json").read_bytes())
                self._error(404, f"no such endpoint {self.path}")

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                if self.path.startswith("/token"):
                    with kit._lock:
                        kit.tokens += 1
                    return self._send(
                        200,
                        json.dumps(
                            {
                                "access_token": "stand-in-token",
                                "expires_in": 3600,
                                "token_type": "Bearer",
                            }
                        ).encode(),
                    )
                if self.headers.get("Authorization") != "Bearer stand-in-token":
                    return self._error(401, "Request had invalid authentication credentials.")
                body = json.loads(raw or b"{}")
                try:
                    if self.path.split("?")[0].endswith("/value:compute"):
                        result = _Evaluator(kit.world, body["expression"]).run()
                        doc = {"type": "ImageCollection", "features": result}
                        return self._send(200, json.dumps({"result": doc}).encode())
                    if self.path.split("?")[0].endswith("/image:computePixels"):
                        return kit._pixels(self, body)
                except EeExprError as exc:
                    return self._error(400, str(exc))
                self._error(404, f"no such endpoint {self.path}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self.server.timeout = 0.2
        while time.monotonic() < self._deadline and not getattr(self, "_stop", False):
            self.server.handle_request()

    def _pixels(self, h: Any, body: dict[str, Any]) -> None:
        grid = body["grid"]
        expr = body["expression"]
        ids = [
            v["functionInvocationValue"]["arguments"]["id"]["constantValue"]
            for v in _walk(expr)
            if v.get("functionInvocationValue", {}).get("functionName") == "Image.load"
        ]
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            rec = {
                "ids": ids,
                "width": grid["dimensions"]["width"],
                "height": grid["dimensions"]["height"],
                "grid": grid,
            }
            self.pixel_requests.append(rec)
            throttled = self.throttle > 0
            if throttled:
                self.throttle -= 1
        t0 = time.perf_counter()
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            if throttled:
                rec["status"] = 429
                return h._error(429, "Too many concurrent aggregations.")
            for i in ids:
                if i in self.fail_images:
                    code, msg = self.fail_images[i]
                    rec["status"] = code
                    return h._error(code, msg)
            img = _Evaluator(self.world, expr).run()
            arr = render(self.world, img, grid)
            rec["status"] = 200
            rec["bands"] = list(arr.dtype.names or ())
            buf = io.BytesIO()
            np.save(buf, arr)
            h._send(200, buf.getvalue(), "application/octet-stream")
        finally:
            rec["ms"] = (time.perf_counter() - t0) * 1e3
            with self._lock:
                self.in_flight -= 1

    def __enter__(self) -> EeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        self.server.server_close()


def _walk(expr: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of a serialized expression (to find the images it loads)."""
    out: list[dict[str, Any]] = []
    stack: list[Any] = list(expr["values"].values())
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            out.append(n)
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)
    return out


def service_account_key(directory: Path, token_url: str) -> Path:
    """A service-account key file (what ``GOOGLE_APPLICATION_CREDENTIALS`` names), with a
    fresh RSA key and the stand-in's token endpoint: the client's standard credential path
    (application default credentials) runs for real, with nothing real in it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path = directory / "service-account.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "stand-in",
                "private_key_id": "stand-in-key",
                "private_key": pem,
                "client_email": "builder@stand-in.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": f"{token_url}/token",
            }
        )
    )
    return path
