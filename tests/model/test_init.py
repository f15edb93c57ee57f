"""``terraloom.model.evaluate`` is the evaluation module (the generic check of every package's
published names is tests/test_public_names.py)."""

from __future__ import annotations

import inspect


def test_evaluate_is_the_evaluation_module() -> None:
    import terraloom.model
    import terraloom.model.evaluate

    assert inspect.ismodule(terraloom.model.evaluate)
    assert callable(terraloom.model.evaluate.evaluate_generation)
