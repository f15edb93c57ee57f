"""The product writers: one function per task kind, each writing COGs and returning STAC
items (S2 L2A/L1C tiles with all their dates, S1 GRD slices per orbit, S1 RTC frames, LULC
tiles, DEM tiles). Pure given (seed, preset, task): the bytes never depend on scheduling."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from rasterio.control import GroundControlPoint
from shapely.geometry import Polygon, box

from terraloom.pipeline.world import grids as gr
from terraloom.pipeline.world import sensors as sn
from terraloom.pipeline.world import stac
from terraloom.pipeline.world.cog import round_mantissa, write_cog
from terraloom.pipeline.world.model import DEM_NOISE_M, RegionModel
from terraloom.pipeline.world.noise import rng_for
from terraloom.pipeline.world.regions import Acquisition, transformer, zone_lon_range
from terraloom.pipeline.world.tasks import (
    BLOCK_ROWS,
    RTC_NODATA,
    S2_10M,
    S2_20M,
    S2_60M_L1C,
    TaskResult,
    cached_latent,
    compact_time,
    noise_window,
    pct,
    proj_fields,
    quantise_s2,
    window_geometry,
)

# --- Sentinel-2 ---------------------------------------------------------------------------------


def write_s2_tile(
    model: RegionModel, tile: gr.S2Tile, out: Path, overviews: bool, cache: Path | None
) -> TaskResult:
    res_bands = {10: S2_10M, 20: S2_20M, 60: S2_60M_L1C}
    per_res = {}
    for res in (10, 20, 60):
        grid = tile.grid(res)
        got = window_geometry(model, grid)
        if got is None:
            return TaskResult()
        geom, mask, win = got
        if res == 10 and cache is not None:
            lat = cached_latent(model, cache, grid, win)
        else:
            lat = model.latent(geom, grad=True, precise=False)
        per_res[res] = (grid, geom, mask, win, lat)
    result = TaskResult()
    n_l1c = model.preset.n_l1c
    footprint = gr.lonlat_footprint(model.frame, tile.epsg, tile.bounds)
    for acq in model.s2_acqs:
        want_l1c = acq.index < n_l1c
        stamp = compact_time(acq.datetime)
        proc = compact_time(acq.datetime + timedelta(hours=2, minutes=37, seconds=11))
        sat = "S2A" if acq.platform.endswith("A") else "S2B"
        ids = {
            "L2A": f"{sat}_MSIL2A_{stamp}_R{acq.relative_orbit:03d}_T{tile.mgrs}_{proc}",
            "L1C": f"{sat}_MSIL1C_{stamp}_R{acq.relative_orbit:03d}_T{tile.mgrs}_{proc}",
        }
        rasters: dict[str, dict[str, tuple[np.ndarray, int]]] = {"L2A": {}, "L1C": {}}
        scl_full = None
        scl_counts = None
        for res in (10, 20, 60):
            grid, geom, mask, win, lat = per_res[res]
            r0, r1, c0, c1 = win
            bands = res_bands[res]
            state = model.s2(geom, lat, acq.datetime, bands, l1c=want_l1c, precise=False)
            levels = [("L2A", tuple(b for b in bands if b != "B10"), state["l2a"])]
            if want_l1c:
                levels.append(("L1C", bands, state["l1c"]))
            for level, lb, dn in levels:
                for i, b in enumerate(lb):
                    full = np.zeros(grid.shape, np.uint16)
                    q = quantise_s2(
                        dn[i].astype(np.float32), model.seed, rng_for(model.seed, ids[level], b)
                    )
                    full[r0:r1, c0:c1] = np.where(mask, q, 0)
                    rasters[level][b] = (full, res)
            if res == 20:
                scl = model.scl(geom, lat, acq.datetime, state)
                scl_full = np.zeros(grid.shape, np.uint8)
                scl_full[r0:r1, c0:c1] = np.where(mask, scl, 0)
                scl_counts = np.bincount(scl[mask].ravel(), minlength=12)
        assert scl_full is not None and scl_counts is not None
        n_valid = int(scl_counts.sum())
        n_all = int(scl_full.size)
        sun = model.sun(acq.datetime)
        cloud = pct(int(scl_counts[8] + scl_counts[9] + scl_counts[10]), n_valid)
        common = {
            "datetime": acq.iso,
            "platform": acq.platform,
            "constellation": "Sentinel 2",
            "instruments": ["msi"],
            "eo:cloud_cover": cloud,
            "sat:orbit_state": acq.orbit_state,
            "sat:relative_orbit": acq.relative_orbit,
            "s2:mgrs_tile": tile.mgrs,
            "s2:processing_baseline": sn.PROCESSING_BASELINE,
            "s2:datatake_id": f"G{sat}_{stamp}_{acq.absolute_orbit:06d}_N{sn.PROCESSING_BASELINE}",
            "s2:nodata_pixel_percentage": pct(n_all - n_valid, n_all),
            "s2:high_proba_clouds_percentage": pct(int(scl_counts[9]), n_valid),
            "s2:medium_proba_clouds_percentage": pct(int(scl_counts[8]), n_valid),
            "s2:thin_cirrus_percentage": pct(int(scl_counts[10]), n_valid),
            "s2:cloud_shadow_percentage": pct(int(scl_counts[3]), n_valid),
            "s2:vegetation_percentage": pct(int(scl_counts[4]), n_valid),
            "s2:not_vegetated_percentage": pct(int(scl_counts[5]), n_valid),
            "s2:water_percentage": pct(int(scl_counts[6]), n_valid),
            "s2:snow_ice_percentage": pct(int(scl_counts[11]), n_valid),
            "s2:mean_solar_zenith": round(sun[0], 6),
            "s2:mean_solar_azimuth": round(sun[1], 6),
            "proj:code": f"EPSG:{tile.epsg}",
        }
        for level in ("L2A", "L1C") if want_l1c else ("L2A",):
            iid = ids[level]
            folder = out / f"sentinel-2-{level.lower()}" / iid
            folder.mkdir(parents=True, exist_ok=True)
            assets: dict[str, dict[str, Any]] = {}
            for b in sn.S2_BANDS_L1C:
                if b not in rasters[level]:
                    continue
                arr, res = rasters[level][b]
                fname = f"T{tile.mgrs}_{stamp}_{b}_{res}m.tif"
                result.nbytes += write_cog(
                    folder / fname,
                    arr,
                    epsg=tile.epsg,
                    transform=tile.grid(res).transform,
                    nodata=0,
                    overviews=overviews,
                )
                wl, fw = sn.S2_WAVELENGTH[b]
                num = b[1:].lstrip("0")
                assets[b] = {
                    "href": f"./{fname}",
                    "type": stac.COG,
                    "title": f"Band {num} - {sn.S2_COMMON[b]} - {res}m",
                    "roles": ["data"],
                    "gsd": float(res),
                    **{
                        k: v
                        for k, v in proj_fields(tile.epsg, tile.grid(res)).items()
                        if k != "proj:code"
                    },
                    "eo:bands": [
                        {
                            "name": b,
                            "common_name": sn.S2_COMMON[b],
                            "description": f"Band {num}",
                            "center_wavelength": wl,
                            "full_width_half_max": fw,
                        }
                    ],
                    "raster:bands": [
                        {
                            "nodata": 0,
                            "data_type": "uint16",
                            "bits_per_sample": 15,
                            "spatial_resolution": float(res),
                            "scale": 0.0001,
                            "offset": -0.1,
                        }
                    ],
                }
            if level == "L2A":
                fname = f"T{tile.mgrs}_{stamp}_SCL_20m.tif"
                result.nbytes += write_cog(
                    folder / fname,
                    scl_full,
                    epsg=tile.epsg,
                    transform=tile.grid(20).transform,
                    nodata=0,
                    overviews=overviews,
                )
                assets["SCL"] = {
                    "href": f"./{fname}",
                    "type": stac.COG,
                    "title": "Scene classfication map (SCL)",
                    "roles": ["data"],
                    "gsd": 20.0,
                    **{
                        k: v
                        for k, v in proj_fields(tile.epsg, tile.grid(20)).items()
                        if k != "proj:code"
                    },
                    "raster:bands": [
                        {"nodata": 0, "data_type": "uint8", "spatial_resolution": 20.0}
                    ],
                }
            props = dict(common)
            props["s2:product_type"] = "S2MSI2A" if level == "L2A" else "S2MSI1C"
            props["s2:product_uri"] = (
                f"{sat}_MSI{level}_{stamp}_N{sn.PROCESSING_BASELINE.replace('.', '')}_R{acq.relative_orbit:03d}_T{tile.mgrs}_{proc}.SAFE"
            )
            props["s2:granule_id"] = (
                f"{sat}_OPER_MSI_{level}_TL_2APS_{proc}_A{acq.absolute_orbit:06d}_T{tile.mgrs}_N{sn.PROCESSING_BASELINE}"
            )
            props = dict(sorted(props.items()))
            item = stac.item_dict(
                iid,
                f"sentinel-2-{level.lower()}",
                footprint,
                props,
                assets,
                ("eo", "proj", "raster", "sat"),
            )
            result.items.append((f"sentinel-2-{level.lower()}", item))
    return result


# --- Sentinel-1 ---------------------------------------------------------------------------------


def s1_properties(acq: Acquisition, start: Any, end: Any) -> dict[str, Any]:
    return {
        "datetime": acq.iso,
        "start_datetime": stac.iso(start),
        "end_datetime": stac.iso(end),
        "platform": acq.platform,
        "constellation": "Sentinel-1",
        "sar:instrument_mode": "IW",
        "sar:frequency_band": "C",
        "sar:center_frequency": 5.405,
        "sar:polarizations": ["VV", "VH"],
        "sar:product_type": "GRD",
        "sar:resolution_range": 20,
        "sar:resolution_azimuth": 22,
        "sar:pixel_spacing_range": 10,
        "sar:pixel_spacing_azimuth": 10,
        "sar:looks_range": 5,
        "sar:looks_azimuth": 1,
        "sar:looks_equivalent_number": sn.S1_ENL,
        "sar:observation_direction": "right",
        "sat:orbit_state": acq.orbit_state,
        "sat:relative_orbit": acq.relative_orbit,
        "sat:absolute_orbit": acq.absolute_orbit,
        "sat:platform_international_designator": "2014-016A",
        "s1:instrument_configuration_ID": "7",
        "s1:resolution": "high",
    }


def s1_product_id(acq: Acquisition, slice_index: int) -> tuple[str, Any, Any]:
    start = acq.datetime + timedelta(seconds=25 * slice_index - 12)
    end = start + timedelta(seconds=25)
    pid = f"S1A_IW_GRDH_1SDV_{compact_time(start)}_{compact_time(end)}_{acq.absolute_orbit:06d}_{(acq.absolute_orbit * 7 + 13) % 0xFFFFFF:06X}"
    return pid, start, end


def speckle(seed: int, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Gamma(ENL) multiplicative speckle, (bands, h, w)."""
    hw = (int(shape[1]), int(shape[2]))
    return np.stack([noise_window("gamma", seed, rng, hw) for _ in range(shape[0])])


def sar_assets(
    fnames: dict[str, str], nodata: float, extra: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    titles = {
        "vv": "VV: vertical transmit, vertical receive",
        "vh": "VH: vertical transmit, horizontal receive",
    }
    return {
        pol: {
            "href": f"./{fnames[pol]}",
            "type": stac.COG,
            "title": titles[pol],
            "roles": ["data"],
            **extra,
            "raster:bands": [
                {"nodata": nodata, "data_type": "float32", "spatial_resolution": 10.0}
            ],
        }
        for pol in ("vv", "vh")
    }


def write_grd_slice(
    model: RegionModel, orbit_state: str, slice_index: int, out: Path, overviews: bool
) -> TaskResult:
    look = sn.look_geometry(model.landscape, orbit_state)
    radar = gr.radar_grids(model.frame, look, orbit_state)[slice_index]
    acqs = [a for a in model.s1_acqs if a.orbit_state == orbit_state]
    if not acqs:
        return TaskResult()
    h, w = radar.shape
    data = np.zeros((len(acqs), 2, h, w), np.float32)
    ids = [s1_product_id(a, slice_index) for a in acqs]
    for r0 in range(0, h, BLOCK_ROWS):
        r1 = min(h, r0 + BLOCK_ROWS)
        x, y = radar.grid(r0, r1).coords()
        mask = model.frame.inside(x, y)
        cols = np.nonzero(mask.any(axis=0))[0]
        if cols.size == 0:
            continue
        c0, c1 = int(cols[0]), int(cols[-1]) + 1
        g = radar.grid(r0, r1, c0, c1)
        m = mask[:, c0:c1]
        lat = model.latent(g, grad=True, precise=False)
        for i, acq in enumerate(acqs):
            s0 = model.grd(g, lat, acq.datetime)
            sp = speckle(model.seed, rng_for(model.seed, ids[i][0], "speckle", r0), s0.shape)
            data[i, :, r0:r1, c0:c1] = np.where(m[None], (s0 * sp).astype(np.float32), 0.0)
    ll, pp = radar.gcp_nodes()
    gx, gy = radar.corner_xy(ll, pp)
    lon, lat_ = model.frame.to_crs(4326, gx, gy)
    gcps = [
        GroundControlPoint(row=float(r), col=float(c), x=float(a), y=float(b), z=0.0, id=str(k + 1))
        for k, (r, c, a, b) in enumerate(zip(ll, pp, lon, lat_))
    ]
    # footprint: the slice parallelogram inside the data rectangle

    cx, cy = radar.corner_xy(np.array([0, 0, h, h], float), np.array([0, w, w, 0], float))
    poly = Polygon(list(zip(cx, cy))).intersection(box(*model.frame.data_rect))
    t = transformer(model.frame.epsg, 4326)
    ox, oy = model.frame.origin

    foot = shapely.set_precision(
        shapely.transform(
            poly.segmentize(500.0),
            lambda c: np.column_stack(t.transform(c[:, 0] + ox, c[:, 1] + oy)),
        ),
        1e-7,
    )
    result = TaskResult()
    for i, acq in enumerate(acqs):
        pid, start, end = ids[i]
        folder = out / "sentinel-1-grd" / pid
        folder.mkdir(parents=True, exist_ok=True)
        fnames = {pol: f"{pid.lower()}-{pol}.tif" for pol in ("vv", "vh")}
        for j, pol in enumerate(("vv", "vh")):
            result.nbytes += write_cog(
                folder / fnames[pol],
                round_mantissa(data[i, j]),
                gcps=gcps,
                nodata=0.0,
                overviews=overviews,
            )
        props = s1_properties(acq, start, end)
        props["s1:shape"] = [w, h]
        props["s1:slice_number"] = str(slice_index + 1)
        props = dict(sorted(props.items()))
        item = stac.item_dict(
            pid,
            "sentinel-1-grd",
            foot,
            props,
            sar_assets(fnames, 0.0, {}),
            ("sar", "sat", "raster"),
        )
        result.items.append(("sentinel-1-grd", item))
    return result


def write_rtc_frame(
    model: RegionModel, slice_index: int, out: Path, overviews: bool, cache: Path
) -> TaskResult:
    grid = gr.rtc_grids(model.frame)[slice_index]
    acqs = model.s1_acqs
    h, w = grid.shape
    data = np.full((len(acqs), 2, h, w), RTC_NODATA, np.float32)
    ids = [s1_product_id(a, slice_index)[0] + "_rtc" for a in acqs]
    for r0 in range(0, h, BLOCK_ROWS):
        r1 = min(h, r0 + BLOCK_ROWS)
        g = grid.window_grid(model.frame, r0, r1, 0, w)
        x, y = g.coords()
        mask = model.frame.inside(x, y)
        if not mask.any():
            continue
        lat = cached_latent(model, cache, grid, (r0, r1, 0, w))
        for i, acq in enumerate(acqs):
            g0 = model.rtc(lat, acq.datetime)
            sp = speckle(model.seed, rng_for(model.seed, ids[i], "speckle", r0), g0.shape)
            data[i, :, r0:r1, :] = np.where(mask[None], (g0 * sp).astype(np.float32), RTC_NODATA)
    foot = gr.lonlat_footprint(model.frame, grid.epsg, grid.bounds)
    result = TaskResult()
    for i, acq in enumerate(acqs):
        _, start, end = s1_product_id(acq, slice_index)
        iid = ids[i]
        folder = out / "sentinel-1-rtc" / iid
        folder.mkdir(parents=True, exist_ok=True)
        fnames = {pol: f"{iid.lower()}-{pol}.tif" for pol in ("vv", "vh")}
        for j, pol in enumerate(("vv", "vh")):
            result.nbytes += write_cog(
                folder / fnames[pol],
                round_mantissa(data[i, j]),
                epsg=grid.epsg,
                transform=grid.transform,
                nodata=RTC_NODATA,
                overviews=overviews,
            )
        props = s1_properties(acq, start, end)
        props.update(proj_fields(grid.epsg, grid))
        props = dict(sorted(props.items()))
        item = stac.item_dict(
            iid,
            "sentinel-1-rtc",
            foot,
            props,
            sar_assets(fnames, RTC_NODATA, {}),
            ("sar", "sat", "proj", "raster"),
        )
        result.items.append(("sentinel-1-rtc", item))
    return result


# --- LULC and DEM -------------------------------------------------------------------------------


def zone_mask(epsg: int, grid: gr.RasterGrid, win: tuple[int, int, int, int]) -> np.ndarray:
    """Pixels of a zone-``epsg`` tile whose longitude lies inside that zone (Esri tiles hold
    data only in their own zone)."""
    r0, r1, c0, c1 = win
    a, _, c, _, e, f = grid.transform
    ys = f + (np.arange(r0, r1) + 0.5) * e
    xs = c + (np.arange(c0, c1) + 0.5) * a
    w, east = zone_lon_range(epsg)
    _, lat = transformer(epsg, 4326).transform(
        [xs[0], xs[-1], xs[0], xs[-1]], [ys[0], ys[0], ys[-1], ys[-1]]
    )
    # each boundary meridian as x(y) in zone coordinates, sampled every ~40 m of latitude
    lats = np.linspace(min(lat) - 0.01, max(lat) + 0.01, 1024)
    mask = np.ones((r1 - r0, c1 - c0), bool)
    for lon in (w, east):
        bx, by = transformer(4326, epsg).transform(np.full(lats.size, lon), lats)
        order = np.argsort(by)
        xb = np.interp(ys, np.asarray(by)[order], np.asarray(bx)[order])
        mask &= (xs[None, :] >= xb[:, None]) if lon == w else (xs[None, :] < xb[:, None])
    return mask


def write_lulc_tile(
    model: RegionModel, tile: gr.LulcTile, out: Path, overviews: bool, year: int, cache: Path | None
) -> TaskResult:
    got = window_geometry(model, tile.grid)
    if got is None:
        return TaskResult()
    geom, mask, win = got
    if tile.clip_to_zone:
        mask = mask & zone_mask(tile.epsg, tile.grid, win)
    if cache is not None:
        lat = cached_latent(model, cache, tile.grid, win)
    else:
        lat = model.latent(geom, grad=False, precise=False)
    cls = model.lulc(geom, lat)
    r0, r1, c0, c1 = win
    full = np.zeros(tile.grid.shape, np.uint8)
    full[r0:r1, c0:c1] = np.where(mask, cls, 0)
    iid = f"{tile.tile_id}-{year}"
    folder = out / "io-lulc-9-class" / iid
    folder.mkdir(parents=True, exist_ok=True)
    fname = f"{iid}.tif"
    result = TaskResult()
    result.nbytes += write_cog(
        folder / fname,
        full,
        epsg=tile.epsg,
        transform=tile.grid.transform,
        nodata=0,
        overviews=overviews,
    )
    props = {
        "datetime": None,
        "start_datetime": f"{year}-01-01T00:00:00Z",
        "end_datetime": f"{year + 1}-01-01T00:00:00Z",
        "io:tile_id": tile.tile_id,
        "io:supercell_id": tile.tile_id[:3],
        **proj_fields(tile.epsg, tile.grid),
    }
    assets = {
        "data": {
            "href": f"./{fname}",
            "type": stac.COG,
            "title": "Global land use/land cover (9 classes, Esri legend)",
            "description": "1 water, 2 trees, 4 flooded vegetation, 5 crops, 7 built area, 8 bare ground, 9 snow/ice, 10 clouds, 11 rangeland; 0 nodata",
            "roles": ["data"],
            "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 10.0}],
        }
    }
    foot = gr.lonlat_footprint(model.frame, tile.epsg, tile.grid.bounds)
    result.items.append(
        (
            "io-lulc-9-class",
            stac.item_dict(iid, "io-lulc-9-class", foot, props, assets, ("proj", "raster")),
        )
    )
    return result


def write_dem_tiles(
    model: RegionModel, tiles: list[gr.DemTile], out: Path, overviews: bool
) -> TaskResult:

    result = TaskResult()
    for tile in tiles:
        grid = tile.grid
        pts = grid.window_points(model.frame, 0, grid.shape[0], 0, grid.shape[1], step=1)
        h = model.landscape.terrain(pts, grad=False, precise=False)["h"]
        h = (
            h + rng_for(model.seed, tile.name, "dem").standard_normal(h.shape) * DEM_NOISE_M
        ).astype(np.float32)
        folder = out / "cop-dem-glo-30" / tile.name
        folder.mkdir(parents=True, exist_ok=True)
        fname = f"{tile.name}.tif"
        result.nbytes += write_cog(
            folder / fname,
            h,
            epsg=4326,
            transform=grid.transform,
            overviews=overviews,
            tags={"AREA_OR_POINT": "Point"},
        )
        props = {
            "datetime": "2021-04-22T00:00:00Z",
            "platform": "TanDEM-X",
            "gsd": 30,
            **{k: v for k, v in proj_fields(4326, grid).items() if k != "proj:bbox"},
        }
        assets = {
            "data": {
                "href": f"./{fname}",
                "type": stac.COG,
                "title": tile.name.replace("Copernicus_DSM_COG_10_", "").replace("_DEM", ""),
                "roles": ["data"],
                "raster:bands": [
                    {
                        "sampling": "point",
                        "data_type": "float32",
                        "spatial_resolution": 30,
                        "unit": "metre",
                    }
                ],
            }
        }
        result.items.append(
            (
                "cop-dem-glo-30",
                stac.item_dict(
                    tile.name, "cop-dem-glo-30", box(*tile.bbox), props, assets, ("proj", "raster")
                ),
            )
        )
    return result
