"""The catalog: real collection ids/asset keys/extensions, valid items, georeferencing that
matches ``proj:*`` (GRD: GCPs only), relative hrefs, world.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio

from terraloom.pipeline.world import offline_validator
from terraloom.pipeline.world.regions import GENERATOR_VERSION
from terraloom.schemas.registry import REGISTRY

# the world serves every source collection of the registry (the derived modalities have none)
COLLECTIONS = sorted({c for m in REGISTRY for c in m.collections})
S2_L2A_KEYS = {
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B8A",
    "B09",
    "B11",
    "B12",
    "SCL",
}


def _items(root: Path, coll: str) -> list[Path]:
    return sorted((root / coll).glob("*/*.json"))


def test_catalog_walks_with_pystac_and_hrefs_are_relative(tiny_dir: Path) -> None:
    cat = pystac.Catalog.from_file(str(tiny_dir / "catalog.json"))
    cols = {c.id: c for c in cat.get_children()}
    assert set(cols) == set(COLLECTIONS)
    for cid, col in cols.items():
        items = list(col.get_items())
        assert len(items) == len(_items(tiny_dir, cid)) > 0
    for p in tiny_dir.rglob("*.json"):
        doc = json.loads(p.read_text())
        for a in doc.get("assets", {}).values():
            assert a["href"].startswith("./") and (p.parent / a["href"]).is_file()
        for link in doc.get("links", []):
            assert not link["href"].startswith(("/", "http", "file:"))


def test_every_item_validates_offline(tiny_dir: Path) -> None:
    v = offline_validator()
    seen_ext: set[str] = set()
    for cid in COLLECTIONS:
        for p in _items(tiny_dir, cid):
            item = pystac.Item.from_file(str(p))
            checked = item.validate(validator=v)
            assert len(checked) == 1 + len(item.stac_extensions)
            seen_ext.update(item.stac_extensions)
    assert {u.split("/")[3] for u in seen_ext} == {"eo", "projection", "raster", "sar", "sat"}


def test_properties_follow_the_real_collections(tiny_dir: Path) -> None:
    l2a = json.loads(_items(tiny_dir, "sentinel-2-l2a")[0].read_text())
    assert set(l2a["assets"]) == S2_L2A_KEYS
    p = l2a["properties"]
    assert p["s2:processing_baseline"] >= "04.00" and 0 <= p["eo:cloud_cover"] <= 100
    assert p["s2:mgrs_tile"] and p["proj:code"].startswith("EPSG:326")
    rb = l2a["assets"]["B04"]["raster:bands"][0]
    assert (rb["scale"], rb["offset"], rb["nodata"]) == (0.0001, -0.1, 0)
    l1c = json.loads(_items(tiny_dir, "sentinel-2-l1c")[0].read_text())
    assert set(l1c["assets"]) == (S2_L2A_KEYS - {"SCL"}) | {"B10"}
    for cid in ("sentinel-1-grd", "sentinel-1-rtc"):
        doc = json.loads(_items(tiny_dir, cid)[0].read_text())
        assert set(doc["assets"]) == {"vv", "vh"}
        assert doc["properties"]["sar:polarizations"] == ["VV", "VH"]
        assert doc["properties"]["sar:instrument_mode"] == "IW"
    grd = [json.loads(p.read_text()) for p in _items(tiny_dir, "sentinel-1-grd")]
    assert not any(k.startswith("proj:") for d in grd for k in d["properties"])
    states = {(d["properties"]["sat:orbit_state"], d["properties"]["datetime"][:10]) for d in grd}
    assert {s for s, _ in states} == {"ascending", "descending"}
    assert len({day for _, day in states}) == len(states), "passes on different days"


def _asset_checks(item: dict, folder: Path) -> None:
    props = item["properties"]
    for key, a in item["assets"].items():
        with rasterio.open(folder / a["href"]) as ds:
            assert ds.driver == "GTiff" and ds.profile.get("compress", "").lower() == "zstd"
            assert ds.block_shapes[0] == (512, 512) or ds.block_shapes[0] == ds.shape
            if item["collection"] == "sentinel-1-grd":
                gcps, crs = ds.gcps
                assert len(gcps) >= 100 and crs.to_epsg() == 4326
                assert ds.transform.is_identity
                continue
            shape = a.get("proj:shape", props.get("proj:shape"))
            transform = a.get("proj:transform", props.get("proj:transform"))
            code = a.get("proj:code", props.get("proj:code"))
            assert ds.crs.to_epsg() == int(code.split(":")[1]), key
            assert list(ds.shape) == shape, key
            np.testing.assert_allclose(list(ds.transform)[:6], transform[:6], rtol=0, atol=1e-9)
            if item["collection"] == "cop-dem-glo-30":
                assert ds.tags().get("AREA_OR_POINT") == "Point"
                assert ds.dtypes[0] == "float32"


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_assets_open_and_match_proj(tiny_dir: Path) -> None:
    n = 0
    for cid in COLLECTIONS:
        for p in _items(tiny_dir, cid):
            doc = json.loads(p.read_text())
            _asset_checks(doc, p.parent)
            n += len(doc["assets"])
    assert n == sum(1 for _ in tiny_dir.rglob("*.tif"))


def test_world_json_describes_regions_and_period(tiny_dir: Path) -> None:
    doc = json.loads((tiny_dir / "world.json").read_text())
    assert doc["version"] == GENERATOR_VERSION and doc["preset"] == "tiny" and doc["seed"] == 0
    epsgs = {e for r in doc["regions"] for e in r["utm_epsgs"]}
    straddling = [r for r in doc["regions"] if len(r["utm_epsgs"]) >= 2]
    assert straddling, "a region straddles a zone boundary"
    for r in straddling:  # samples are expected on both sides of the boundary
        boundary = -180.0 + 6.0 * (r["utm_epsgs"][0] % 100)
        assert r["bbox"][0] + 0.02 < boundary < r["bbox"][2] - 0.02
    assert any(e // 100 == 327 for e in epsgs) and len({e % 100 for e in epsgs}) >= 2
    for r in doc["regions"]:
        w, s, e, n = r["bbox"]
        dw, ds, de, dn = r["data_bbox"]
        assert dw < w < e < de and ds < s < n < dn
        assert r["period"]["start"] <= r["s2_datetimes"][0][:10] <= r["period"]["end"]
    assert doc["item_counts"]["sentinel-2-l2a"] == len(_items(tiny_dir, "sentinel-2-l2a"))


def test_dem_tiles_meet_on_an_arcsecond_lattice(tiny_dir: Path) -> None:
    tiles = {}
    for p in _items(tiny_dir, "cop-dem-glo-30"):
        doc = json.loads(p.read_text())
        a, _, c, _, e, f = doc["properties"]["proj:transform"][:6]
        h, w = doc["properties"]["proj:shape"]
        assert a == -e == 1 / 3600 and (h, w) == (180, 180)
        # pixel-is-point: the first centre sits on a whole 3-arc-minute node
        west, north = round((c + a / 2) * 3600), round((f + e / 2) * 3600)
        assert west % 180 == 0 and north % 180 == 0
        tiles[(west, north)] = doc["id"]
    # neighbours: the next tile's first centre is one arc-second after this tile's last one
    pairs = sum((w + 180, n) in tiles for w, n in tiles) + sum(
        (w, n - 180) in tiles for w, n in tiles
    )
    assert pairs >= len(tiles)


def test_offline_validator_rejects_a_bad_extension_field(tiny_dir: Path) -> None:
    from pystac.errors import STACValidationError

    p = _items(tiny_dir, "sentinel-1-rtc")[0]
    item = pystac.Item.from_file(str(p))
    item.properties["sat:orbit_state"] = "sideways"
    with pytest.raises(STACValidationError):
        item.validate(validator=offline_validator())
