"""The embedded synthetic world: a deterministic small planet published as a local static
STAC catalog of Cloud-Optimized GeoTIFFs shaped like the real collections, with an exact
ground-truth function for co-registration tests.

    info = generate_world("world/", preset="tiny", seed=0)   # or cached_world("tiny", 0)
    world = load_world("world/")
    world.truth("S2L2A", lon, lat, "2023-06-01T09:42:03Z")   # (12, *lon.shape) DN
"""

from __future__ import annotations

from terraloom.pipeline.world.cli import add_world_parser
from terraloom.pipeline.world.generate import WorldInfo, cached_world, generate_world
from terraloom.pipeline.world.regions import GENERATOR_VERSION, PRESETS
from terraloom.pipeline.world.stac import offline_validator
from terraloom.pipeline.world.world import RegionInfo, World, load_world

__all__ = [
    "GENERATOR_VERSION",
    "PRESETS",
    "RegionInfo",
    "World",
    "WorldInfo",
    "add_world_parser",
    "cached_world",
    "generate_world",
    "load_world",
    "offline_validator",
]
