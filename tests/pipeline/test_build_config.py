"""BuildConfig follows what the plan was asked for, unless told otherwise."""

from __future__ import annotations

import pytest

from terraloom.pipeline.build_config import (
    PLAN_MODALITIES_KEY,
    BuildConfig,
    follow_plan,
    plan_request_metadata,
    planned_modalities,
)


def test_plan_request_round_trips_through_the_metadata() -> None:
    meta = plan_request_metadata(["s2l2a", "DEM"])
    assert planned_modalities(meta) == ("S2L2A", "DEM")
    assert planned_modalities({}) is None and planned_modalities(None) is None
    with pytest.raises(ValueError, match="malformed"):
        planned_modalities({PLAN_MODALITIES_KEY: b"[not json"})


def test_defaults_follow_the_plan_explicit_sets_are_kept() -> None:
    """Issue 17.1: a plan of S2L2A alone, default build config: build S2L2A and what
    derives from it, require S2L2A; never 'S1GRD: required but not planned'."""
    cfg = follow_plan(BuildConfig(), ("S2L2A",))
    assert cfg.modalities == ("S2L2A", "S2RGB", "NDVI", "GEO", "CAPTION")
    assert cfg.required == ("S2L2A",)
    assert follow_plan(BuildConfig(), ("DEM", "LULC")).required == ("DEM", "LULC")
    explicit = BuildConfig(modalities=("S2L2A", "S1GRD"), required=("S1GRD",))
    assert follow_plan(explicit, ("S2L2A",)) is explicit  # flags override the plan
    req_default = follow_plan(BuildConfig(modalities=("S2L2A", "DEM", "S1GRD")), ("S2L2A",))
    assert req_default.modalities == ("S2L2A", "DEM", "S1GRD")  # as given
    assert req_default.required == ("S2L2A",)  # the default required set follows the plan
    assert follow_plan(BuildConfig(), None) == BuildConfig()  # an older plan: unchanged
