"""Cosine fields: grid evaluation (matrix product) == point evaluation == finite differences."""

from __future__ import annotations

import math

import numpy as np

from terraloom.pipeline.world.noise import (
    CosineField,
    Grid,
    Points,
    hash_uniform,
    rng_for,
    stable_hash,
)


def _field() -> CosineField:
    return CosineField.random(rng_for(3, "t"), 48, 40.0, 9000.0, hurst=1.0)


def test_grid_equals_points_on_rotated_grid() -> None:
    f = _field()
    a = math.radians(12.0)
    g = Grid(
        (-3000.25, 1200.5),
        (10 * math.cos(a), 10 * math.sin(a)),
        (10 * math.sin(a), -10 * math.cos(a)),
        (70, 90),
    )
    x, y = g.coords()
    v, (gx, gy) = f(g, grad=True)
    pv, (pgx, pgy) = f(Points(x, y), grad=True)
    np.testing.assert_allclose(v, pv, atol=1e-10)
    np.testing.assert_allclose(gx, pgx, atol=1e-6)  # gradients are float32 on grids
    np.testing.assert_allclose(gy, pgy, atol=1e-6)
    # float32 points stay close (used for non-frame grids)
    np.testing.assert_allclose(f(Points(x, y), dtype=np.float32), v, atol=2e-5)


def test_gradient_matches_finite_difference_and_unit_variance() -> None:
    f = _field()
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-5e3, 5e3, 200), rng.uniform(-5e3, 5e3, 200)
    _, (gx, gy) = f(Points(x, y), grad=True)
    e = 1e-3
    np.testing.assert_allclose((f(Points(x + e, y)) - f(Points(x - e, y))) / (2 * e), gx, atol=1e-7)
    np.testing.assert_allclose((f(Points(x, y + e)) - f(Points(x, y - e))) / (2 * e), gy, atol=1e-7)
    big = f(Points(rng.uniform(-2e5, 2e5, 20000), rng.uniform(-2e5, 2e5, 20000)))
    assert 0.8 < big.std() < 1.2 and abs(big.mean()) < 0.1


def test_seeding_is_stable_and_independent() -> None:
    assert stable_hash("a", 1) == stable_hash("a", 1) != stable_hash("a", 2)
    a = CosineField.random(rng_for(1, "x"), 8, 10.0, 100.0)
    b = CosineField.random(rng_for(1, "x"), 8, 10.0, 100.0)
    c = CosineField.random(rng_for(2, "x"), 8, 10.0, 100.0)
    np.testing.assert_array_equal(a.omega, b.omega)
    assert not np.allclose(a.omega, c.omega)
    u = hash_uniform(7, np.arange(10000), np.zeros(10000, np.int64))
    assert u.min() >= 0.0 and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.02
    np.testing.assert_array_equal(u, hash_uniform(7, np.arange(10000), np.zeros(10000, np.int64)))
