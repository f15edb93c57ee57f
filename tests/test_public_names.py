"""Every package's published names: curated, resolvable, no test helper, and none hides a
submodule (``terraloom.schemas.modalities`` must stay the module, not a function of that name)."""

from __future__ import annotations

import importlib
import importlib.util

import pytest

PACKAGES = (
    "terraloom.schemas",
    "terraloom.storage",
    "terraloom.render",
    "terraloom.pipeline",
    "terraloom.pipeline.sources",
    "terraloom.pipeline.publish",
    "terraloom.tokenize_jobs",
    "terraloom.tokenize_jobs.tokenizers",
    "terraloom.model",
    "terraloom.model.interop",
    "terraloom.orchestration",
)


@pytest.mark.parametrize("package", PACKAGES)
def test_public_names_resolve_and_shadow_no_submodule(package: str) -> None:
    pkg = importlib.import_module(package)
    for name in pkg.__all__:
        assert getattr(pkg, name) is not None, name
        assert importlib.util.find_spec(f"{package}.{name}") is None, (
            f"{package}.{name} is both an exported name and a submodule"
        )
        home = str(getattr(getattr(pkg, name), "__module__", ""))
        assert not home.endswith(".testing"), f"{package}.{name} is a test helper"
