"""Corpus pipeline: grid, harvest, scene matching, co-registration and Zarr/Parquet writers on Apache Beam and Dask.

The public API, imported lazily (``import terraloom.pipeline`` stays cheap: Beam, Dask
and rasterio load only when a name that needs them is used)::

    from terraloom.pipeline import open_source, PlanConfig, plan_samples, write_plan
    from terraloom.pipeline import BuildConfig, run_build, verify_corpus, render_corpus

Everything else is reached through its module (``terraloom.pipeline.<module>``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # where the data comes from
    "open_source": "terraloom.pipeline.sources",
    "generate_world": "terraloom.pipeline.world",
    "cached_world": "terraloom.pipeline.world",
    # plan
    "PlanConfig": "terraloom.pipeline.plan",
    "plan_samples": "terraloom.pipeline.plan",
    "write_plan": "terraloom.pipeline.plan",
    "summarize_plan": "terraloom.pipeline.plan",
    # build
    "BuildConfig": "terraloom.pipeline.build_config",
    "BuildSummary": "terraloom.pipeline.build_summary",
    "BuildInputError": "terraloom.pipeline.build_layout",
    "run_build": "terraloom.pipeline.build",
    "build_block": "terraloom.pipeline.sample",
    # read, check, look at and publish a corpus
    "sample_dataarray": "terraloom.pipeline.xarray_view",
    "verify_corpus": "terraloom.pipeline.verify",
    "render_corpus": "terraloom.pipeline.quicklook",
    "PublishConfig": "terraloom.pipeline.publish",
    "publish_corpus": "terraloom.pipeline.publish",
    "verify_published": "terraloom.pipeline.publish",
}

__all__ = [
    "BuildConfig",
    "BuildInputError",
    "BuildSummary",
    "PlanConfig",
    "PublishConfig",
    "build_block",
    "cached_world",
    "generate_world",
    "open_source",
    "plan_samples",
    "publish_corpus",
    "render_corpus",
    "run_build",
    "sample_dataarray",
    "summarize_plan",
    "verify_corpus",
    "verify_published",
    "write_plan",
]

if TYPE_CHECKING:
    from terraloom.pipeline.build import run_build
    from terraloom.pipeline.build_config import BuildConfig
    from terraloom.pipeline.build_layout import BuildInputError
    from terraloom.pipeline.build_summary import BuildSummary
    from terraloom.pipeline.plan import PlanConfig, plan_samples, summarize_plan, write_plan
    from terraloom.pipeline.publish import PublishConfig, publish_corpus, verify_published
    from terraloom.pipeline.quicklook import render_corpus
    from terraloom.pipeline.sample import build_block
    from terraloom.pipeline.sources import open_source
    from terraloom.pipeline.verify import verify_corpus
    from terraloom.pipeline.world import cached_world, generate_world
    from terraloom.pipeline.xarray_view import sample_dataarray


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'terraloom.pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
