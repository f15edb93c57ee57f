"""The model package's published names: curated, and none hides a submodule."""

from __future__ import annotations

import importlib
import importlib.util
import inspect

import pytest


@pytest.mark.parametrize(
    "package", ["terraloom.model", "terraloom.tokenize_jobs", "terraloom.tokenize_jobs.tokenizers"]
)
def test_public_names_resolve_and_shadow_no_submodule(package: str) -> None:
    pkg = importlib.import_module(package)
    for name in pkg.__all__:
        assert getattr(pkg, name) is not None, name
        assert importlib.util.find_spec(f"{package}.{name}") is None, (
            f"{package}.{name} is both an exported name and a submodule"
        )
        home = str(getattr(getattr(pkg, name), "__module__", ""))
        assert not home.endswith(".testing"), f"{package}.{name} is a test helper"


def test_evaluate_is_the_evaluation_module() -> None:
    import terraloom.model
    import terraloom.model.evaluate

    assert inspect.ismodule(terraloom.model.evaluate)
    assert callable(terraloom.model.evaluate.evaluate_generation)
