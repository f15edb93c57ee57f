"""Presets: what they configure reaches the generator's tasks (no world is generated)."""

from __future__ import annotations

from terraloom.pipeline.world.generate import plan_tasks
from terraloom.pipeline.world.regions import preset, region_specs


def test_wide_tiles_preset_tiles_have_the_configured_size() -> None:
    wide, demo = preset("demo-wide-tiles"), preset("demo")
    # the same regions, cells and dates as demo, so the two worlds plan the same samples
    assert region_specs(wide) == region_specs(demo)
    assert (wide.start, wide.end, wide.n_s2, wide.n_l1c, wide.n_s1) == (
        demo.start,
        demo.end,
        demo.n_s2,
        demo.n_l1c,
        demo.n_s1,
    )
    assert (wide.s2_tile_m, wide.s2_lattice_m, wide.lulc_tile_m) == (31_500, 30_000, 60_000)

    _, phase_b = plan_tasks(0, wide)
    s2 = [t.key[0] for t in phase_b if t.kind == "s2"]
    lulc = [t.key[0] for t in phase_b if t.kind == "lulc"]
    assert s2 and lulc
    for tile in s2:
        assert tile.size == 31_500
        assert tile.grid(10).shape == (3150, 3150)
        assert tile.grid(20).shape == (1575, 1575)
        assert tile.grid(60).shape == (525, 525)
        # upper-left corner 20 m west and north of a 30 km lattice node, as MGRS tiles
        assert (tile.x0 + 20) % 30_000 == 0 and (tile.y1 - 20) % 30_000 == 0
    for lt in lulc:
        assert lt.grid.shape == (6000, 6000)
    # wider tiles: fewer of them than demo's 10.5 km ones over the same regions
    _, demo_b = plan_tasks(0, demo)
    assert len(s2) < sum(1 for t in demo_b if t.kind == "s2") / 3
