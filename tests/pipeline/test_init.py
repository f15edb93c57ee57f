"""The pipeline's published surface: a curated, lazily imported ``__all__``."""

from __future__ import annotations

import subprocess
import sys

import terraloom.pipeline as pipeline


def test_every_public_name_resolves_to_its_defining_module() -> None:
    assert "run_build" in pipeline.__all__ and "BuildConfig" in pipeline.__all__
    for name in pipeline.__all__:
        value = getattr(pipeline, name)
        assert getattr(value, "__name__", name) == name
    assert not [n for n in pipeline.__all__ if n.startswith("_") or "toy" in n]


def test_importing_the_package_loads_no_engine() -> None:
    code = (
        "import sys, terraloom.pipeline as p; "
        "print(sorted(m for m in ('apache_beam', 'distributed', 'rasterio') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"


def test_all_is_exactly_the_lazy_exports() -> None:
    assert sorted(pipeline.__all__) == sorted(pipeline._EXPORTS)
