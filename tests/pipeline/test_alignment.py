from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from affine import Affine
from sample_kit import Synth, grid_transform, plan_row

from terraloom.pipeline.alignment import measure_alignment, subpixel_shift, truth_on_grid
from terraloom.pipeline.sample import BuildConfig, build_block
from terraloom.schemas.modalities import get_modality


def _field(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.sin(x / 7.0) * np.cos(y / 9.0) + 0.5 * np.sin((x + 0.7 * y) / 4.0)


@pytest.mark.parametrize(("dy", "dx"), [(0.0, 0.0), (0.3, -0.2), (-0.12, 0.07), (2.5, 1.1)])
def test_subpixel_shift_recovers_known_displacements(dy: float, dx: float) -> None:
    y, x = np.mgrid[0:264, 0:264].astype(float)
    ref = _field(y, x)
    moving = _field(y - dy, x - dx)  # moving[y, x] = ref[y - dy, x - dx]
    got = subpixel_shift(ref, moving)
    assert got == pytest.approx((dy, dx), abs=0.03)


def test_measure_alignment_tolerates_nodata_and_reports_value_error() -> None:
    y, x = np.mgrid[0:128, 0:128].astype(float)
    truth = _field(y, x)
    warped = _field(y, x - 0.2) + 0.01
    warped[:10, :] = np.nan
    res = measure_alignment(warped, truth)
    assert res.error_px == pytest.approx(0.2, abs=0.05)
    assert 0.0 < res.value_mae < 0.2


def test_truth_on_grid_samples_pixel_centres() -> None:
    t = Affine(10, 0, 500_000, 0, -10, 0.0)  # equator, central meridian of zone 33
    lonlat = truth_on_grid(lambda lon, lat: np.stack([lon, lat]), 32633, t, 4, 3)
    assert lonlat.shape == (2, 3, 4)
    assert lonlat[0, 0, 0] == pytest.approx(15.0 + 5 / 111_320 / 0.9996, abs=1e-7)
    assert lonlat[1, 0, 0] == pytest.approx(-5 / 110_574 / 0.9996, abs=1e-6)


# --------------------------------------------------------------------------- end to end


#: (modality, band, truth getter) measured per case
_BANDS = [
    ("S2L2A", "B02", lambda s: s.s2("B02")),
    ("S2L2A", "B05", lambda s: s.s2("B05")),
    ("S2L2A", "B01", lambda s: s.s2("B01")),
    ("S1GRD", "VV", lambda s: s.s1_db("VV")),
    ("S1GRD", "VH", lambda s: s.s1_db("VH")),
    ("DEM", "elevation", lambda s: s.dem()),
    ("LULC", "class", lambda s: s.lulc()),
]

#: name -> (sample centre lon, lat, sample EPSG, scene EPSG for S2/LULC, split S2 into two tiles)
CASES = {
    "same_zone": (15.3, 45.5, 32633, 32633, False),
    "zone_boundary": (18.012, 45.5, 32634, 32633, False),  # straddles 18 E, S2/LULC from zone 33
    "southern": (151.2, -33.9, 32756, 32756, False),
    "s2_tile_edge": (15.3, 45.5, 32633, 32633, True),
}


def _case_rows(root: Path, case: str) -> tuple[Synth, list[dict[str, Any]]]:
    lon, lat, epsg, scene_epsg, split = CASES[case]
    synth = Synth(root, lon, lat)
    scenes = synth.standard_scenes(scene_epsg, (lon, lat), tag=case)
    if split:
        s2 = scenes[0]
        b04 = next(a for a in s2["assets"] if a["band"] == "B04")
        ul = (b04["transform"][2], b04["transform"][5])
        size = b04["shape"][0] * 10
        edge = ul[0] + size / 2 + 35.0
        west = synth.s2_scene(f"W{case}", scene_epsg, ul, size, valid=lambda x, y: x < edge)
        east = synth.s2_scene(f"E{case}", scene_epsg, ul, size, valid=lambda x, y: x >= edge)
        scenes = [west, east, *scenes[1:]]
    t = grid_transform(epsg, lon, lat)
    rows = [
        plan_row(
            f"{case}_{i}",
            epsg,
            t @ Affine.translation(dx, dy),
            copy.deepcopy(scenes),
            row=i,
            s1_s2_delta_days=0.0,
        )
        for i, (dx, dy) in enumerate([(0, 0), (17, -9)])
    ]
    return synth, rows


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_modality_is_within_a_quarter_pixel_of_the_truth(case: str, tmp_path: Path) -> None:
    """Acceptance (synthetic truth): mean |geolocation error| < 0.25 px per modality,
    measured by sub-pixel cross-correlation against the truth at the pixel centres."""
    synth, rows = _case_rows(tmp_path, case)
    results = build_block(rows, BuildConfig())
    errors: dict[str, list[float]] = {}
    for row, r in zip(rows, results):
        assert r.reject is None, r.reject
        assert r.arrays is not None
        for modality, band, truth_fn in _BANDS:
            m = get_modality(modality)
            warped = r.arrays[modality][m.band_names.index(band)].astype(np.float64)
            truth = truth_on_grid(truth_fn(synth), row["epsg"], row["transform"], 264, 264).astype(
                np.float64
            )
            res = measure_alignment(warped, truth)
            errors.setdefault(f"{modality}/{band}", []).append(res.error_px)
    for key, errs in errors.items():
        mean = float(np.mean(errs))
        print(f"alignment {case:>14} {key:<16} mean |shift| = {mean:.4f} px")
        assert mean < 0.25, (case, key, errs)


def test_refinement_is_robust_to_noise_gain_and_offset() -> None:
    """Speckle-like noise and a radiometric gain/offset (e.g. dB bias) are not shifts."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:200, 0:200].astype(float)

    def f(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        return (
            np.sin(xx / 17.0) * np.cos(yy / 23.0)
            + 0.3 * np.sin((xx + 0.7 * yy) / 40.0)
            + 0.002 * xx
        )

    truth = f(y, x)
    for dy, dx in [(0.0, 0.0), (0.2, -0.1), (-1.4, 2.2)]:
        warped = 2.0 * f(y - dy, x - dx) + 5.0 + rng.normal(0, 0.25, truth.shape)
        res = measure_alignment(warped, truth, smooth_px=2)
        assert (res.dy, res.dx) == pytest.approx((dy, dx), abs=0.1)
        assert res.gain == pytest.approx(2.0, abs=0.05) and res.offset == pytest.approx(
            5.0, abs=0.1
        )


# --------------------------------------------------------------------------- the embedded world

#: (modality, band, Gaussian sigma in px for the comparison: the speckle / source scale)
_WORLD_BANDS = [
    ("S2L2A", "B04", 0.0),
    ("S2L2A", "B05", 0.0),
    ("S2L2A", "B01", 0.0),
    ("S1GRD", "VV", 2.0),
    ("S1GRD", "VH", 2.0),
    ("S1RTC", "VV", 2.0),
    ("DEM", "elevation", 1.0),
    ("LULC", "class", 0.5),
]
_CROP = slice(52, 212)  # the central 160 x 160 px: truth is costly, and this is plenty


def _pick_world_rows(plan: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One sample per situation the acceptance names, distinct samples where possible."""
    import shapely

    def situations(row: dict[str, Any]) -> set[str]:
        w, _, e, _ = shapely.from_wkb(row["geometry"]).bounds
        s2 = [sc for sc in row["scenes"] if sc["modality"] == "S2L2A"]
        out = set()
        if int((w + 180) // 6) != int((e + 180) // 6):
            out.add("zone_straddle")
        if row["center_lat"] < 0:
            out.add("southern")
        if len(s2) >= 2 and len({sc["datetime"] for sc in s2}) == 1:
            out.add("s2_tile_edge")
        if any(sc["modality"] == "S1GRD" for sc in row["scenes"]):
            out.add("grd")
        return out

    picks: dict[str, dict[str, Any]] = {}
    used: set[str] = set()
    for name in ("zone_straddle", "s2_tile_edge", "southern", "grd"):
        cands = [r for r in plan if name in situations(r)]
        fresh = [r for r in cands if r["sample_id"] not in used]
        if cands:
            picks[name] = (fresh or cands)[0]
            used.add(picks[name]["sample_id"])
    return picks


def _crop_transform(t: list[float]) -> tuple[float, ...]:
    k = _CROP.start
    return (t[0], t[1], t[2] + t[0] * k + t[1] * k, t[3], t[4], t[5] + t[3] * k + t[4] * k)


def _reference(
    world: Any, row: dict[str, Any], modality: str, band_index: int, when: Any
) -> np.ndarray:
    """The truth the warped band should match on the crop (see ``truth_from_source_grid``)."""
    from pyproj import Transformer

    from terraloom.pipeline.alignment import truth_from_source_grid

    n = _CROP.stop - _CROP.start
    ct = _crop_transform(row["transform"])
    band = get_modality(modality).band_names[band_index]
    scene = next(sc for sc in row["scenes"] if sc["modality"] == modality)
    a = next((x for x in scene["assets"] if x["band"] == band), None)
    if (
        a is None
        or a.get("transform") is None
        or abs(a["transform"][0]) <= 10.0
        or a.get("epsg") is None
    ):
        return np.asarray(
            world.truth_grid(modality, row["epsg"], ct, (n, n), when)[band_index], np.float64
        )
    # a coarser band: truth sampled on its own grid around the crop, as the product samples it
    st = a["transform"]
    xs = [ct[2], ct[2] + ct[0] * n]
    ys = [ct[5], ct[5] + ct[4] * n]
    cx, cy = np.meshgrid(xs, ys)
    if a["epsg"] != row["epsg"]:
        cx, cy = Transformer.from_crs(row["epsg"], a["epsg"], always_xy=True).transform(cx, cy)
    c0 = int(np.floor((np.min(cx) - st[2]) / st[0])) - 2
    c1 = int(np.ceil((np.max(cx) - st[2]) / st[0])) + 2
    r0 = int(np.floor((np.max(cy) - st[5]) / st[4])) - 2
    r1 = int(np.ceil((np.min(cy) - st[5]) / st[4])) + 2
    wt = (st[0], 0.0, st[2] + c0 * st[0], 0.0, st[4], st[5] + r0 * st[4])
    vals = world.truth_grid(modality, a["epsg"], wt, (r1 - r0, c1 - c0), when)[band_index]
    return truth_from_source_grid(vals, a["epsg"], wt, row["epsg"], ct, (n, n))


def test_world_samples_are_within_a_quarter_pixel_of_the_world_truth(
    tiny_plan: tuple[Path, Any],
) -> None:
    """Acceptance on the embedded world: per modality, mean |geolocation error| against
    ``World.truth`` < 0.25 px over the samples where it is measurable (texture above
    noise: standard error < 0.1 px), incl. a sample straddling a UTM zone boundary, one
    in the southern hemisphere, one across S2 tile edges and S1 GRD through GCPs."""
    from terraloom.pipeline.world import cached_world, load_world
    from terraloom.schemas.tables import read_table

    world = load_world(cached_world("tiny", 0))
    plan = read_table("plan", tiny_plan[0]).to_pylist()
    picks = _pick_world_rows(plan)
    assert {"zone_straddle", "southern", "s2_tile_edge", "grd"} <= set(picks), sorted(picks)
    rows = [
        dict(row, row=i, sample_id=f"{row['sample_id']}:{name}")
        for i, (name, row) in enumerate(sorted(picks.items()))
    ]
    results = build_block(rows, BuildConfig(required=("S2L2A",)))
    errors: dict[str, list[float]] = {}
    for row, r in zip(rows, results):
        assert r.reject is None, r.reject
        assert r.arrays is not None and r.index_row is not None
        for modality, band, sigma in _WORLD_BANDS:
            scenes = [sc for sc in row["scenes"] if sc["modality"] == modality]
            if not scenes or r.index_row["quality"].get(f"available_{modality}") != 1.0:
                continue
            bi = get_modality(modality).band_names.index(band)
            truth = _reference(world, row, modality, bi, scenes[0]["datetime"])
            if modality.startswith("S1"):
                truth = 10 * np.log10(truth)
            warped = r.arrays[modality][bi][_CROP, _CROP].astype(np.float64)
            res = measure_alignment(warped, truth, smooth_px=sigma)
            if res.measurable:
                errors.setdefault(f"{modality}/{band}", []).append(res.error_px)
            note = "" if res.measurable else "  (not measurable: too little texture above noise)"
            print(
                f"world {row['sample_id']:<28} {modality}/{band:<10} |shift| = {res.error_px:.3f} +- {res.sigma_px:.3f} px{note}"
            )
    for key, errs in sorted(errors.items()):
        print(f"world mean {key:<18} {float(np.mean(errs)):.3f} px over {len(errs)} samples")
    wanted = {f"{m}/{b}" for m, b, _ in _WORLD_BANDS}
    assert wanted - {"S1RTC/VV"} <= set(errors), sorted(wanted - set(errors))
    for key, errs in errors.items():
        assert float(np.mean(errs)) < 0.25, (key, errs)
