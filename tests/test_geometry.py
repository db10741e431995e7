"""Mask <-> polygon conversion (engine.geometry)."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from matplotlib.path import Path as MplPath
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon, box

from engine.geometry import geometry_to_mask, mask_to_geometry


def blob_mask(seed: int, shape: tuple[int, int] = (96, 128), sigma: float = 4.0) -> np.ndarray:
    """Random smooth blobs with small holes punched in them, some touching the border."""
    rng = np.random.default_rng(seed)
    coarse = ndimage.gaussian_filter(rng.random(shape), sigma)
    fine = ndimage.gaussian_filter(rng.random(shape), sigma / 3)
    return (coarse > np.quantile(coarse, 0.5)) & (fine < np.quantile(fine, 0.93))


def n_holes(geometry: Polygon | MultiPolygon) -> int:
    return sum(len(p.interiors) for p in shapely.get_parts(geometry))


def test_single_pixel_is_a_unit_square() -> None:
    mask = np.zeros((5, 7), dtype=bool)
    mask[2, 3] = True
    geometry = mask_to_geometry(mask, simplify_tolerance=0)
    assert isinstance(geometry, Polygon)
    assert geometry.area == 1.0
    assert geometry.bounds == (3.0, 2.0, 4.0, 3.0)
    assert len(geometry.exterior.coords) == 5  # four corners, closed


def test_empty_mask_is_none() -> None:
    assert mask_to_geometry(np.zeros((8, 8), dtype=bool)) is None


def test_full_mask_is_the_image_rectangle() -> None:
    geometry = mask_to_geometry(np.ones((6, 9), dtype=bool), simplify_tolerance=0)
    assert geometry is not None
    assert geometry.equals(box(0, 0, 9, 6))


def test_holes_are_kept() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[1:9, 1:9] = True
    mask[3:5, 4:7] = False
    geometry = mask_to_geometry(mask, simplify_tolerance=0)
    assert isinstance(geometry, Polygon)
    assert len(geometry.interiors) == 1
    assert geometry.area == 64 - 6
    assert Polygon(geometry.interiors[0]).equals(box(4, 3, 7, 5))


def test_components_become_a_multipolygon_and_diagonals_stay_apart() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[0:2, 0:2] = True
    mask[5:8, 5:8] = True
    mask[8, 8] = True  # touches the block above only at a corner: a separate piece
    geometry = mask_to_geometry(mask, simplify_tolerance=0)
    assert isinstance(geometry, MultiPolygon)
    assert geometry.is_valid
    assert sorted(p.area for p in geometry.geoms) == [1.0, 4.0, 9.0]


def test_island_inside_a_hole() -> None:
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:18, 2:18] = True
    mask[5:15, 5:15] = False
    mask[8:12, 8:12] = True
    geometry = mask_to_geometry(mask, simplify_tolerance=0)
    assert isinstance(geometry, MultiPolygon)
    assert geometry.is_valid
    assert geometry.area == mask.sum()
    assert np.array_equal(geometry_to_mask(geometry, mask.shape), mask)


@pytest.mark.parametrize("seed", range(12))
def test_round_trip_is_exact_at_tolerance_zero(seed: int) -> None:
    mask = blob_mask(seed)
    geometry = mask_to_geometry(mask, simplify_tolerance=0)
    assert geometry is not None
    assert n_holes(geometry) >= 1
    assert geometry.is_valid
    assert geometry.area == pytest.approx(mask.sum())
    assert np.array_equal(geometry_to_mask(geometry, mask.shape), mask)


@pytest.mark.parametrize("seed", range(20, 26))
def test_round_trip_of_salt_and_pepper(seed: int) -> None:
    """Worst case for the tracer: many saddles and single pixels."""
    mask = np.random.default_rng(seed).random((40, 50)) > 0.5
    geometry = mask_to_geometry(mask, simplify_tolerance=0)
    assert geometry is not None and geometry.is_valid
    assert np.array_equal(geometry_to_mask(geometry, mask.shape), mask)


@pytest.mark.parametrize("seed", range(6))
def test_simplified_area_is_preserved(seed: int) -> None:
    mask = blob_mask(seed, shape=(256, 256), sigma=8.0)
    geometry = mask_to_geometry(mask, simplify_tolerance=1.0)
    assert geometry is not None and geometry.is_valid
    assert n_holes(geometry) >= 1
    assert geometry.area == pytest.approx(mask.sum(), rel=0.02)
    exact = mask_to_geometry(mask, simplify_tolerance=0)
    assert exact is not None
    assert len(shapely.get_coordinates(geometry)) < len(shapely.get_coordinates(exact))


def test_scale_and_offset_map_to_target_coordinates() -> None:
    mask = np.zeros((16, 16), dtype=bool)
    mask[4:8, 2:6] = True
    geometry = mask_to_geometry(mask, scale=4.0, offset=(1000.0, 2000.0), simplify_tolerance=0)
    assert geometry is not None
    assert geometry.bounds == (1008.0, 2016.0, 1024.0, 2032.0)
    back = geometry_to_mask(geometry, mask.shape, scale=4.0, offset=(1000.0, 2000.0))
    assert np.array_equal(back, mask)


def test_min_area_drops_small_pieces_in_target_units() -> None:
    mask = np.zeros((20, 20), dtype=bool)
    mask[1:3, 1:3] = True  # 4 px -> 16 target units at scale 2
    mask[10:16, 10:16] = True  # 36 px -> 144
    kept = mask_to_geometry(mask, scale=2.0, simplify_tolerance=0, min_area=20.0)
    assert isinstance(kept, Polygon)
    assert kept.area == 144.0
    assert mask_to_geometry(mask, scale=2.0, simplify_tolerance=0, min_area=1000.0) is None


def test_large_mask_round_trip() -> None:
    yy, xx = np.mgrid[:1024, :1024]
    mask = np.zeros((1024, 1024), dtype=bool)
    for cx, cy, r in [(200, 200, 150), (600, 300, 200), (300, 750, 220), (800, 800, 150)]:
        mask |= (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
    for cx, cy, r in [(600, 300, 60), (300, 750, 50), (230, 680, 20)]:
        mask &= ~((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)
    geometry = mask_to_geometry(mask, simplify_tolerance=0)
    assert isinstance(geometry, MultiPolygon)
    assert len(geometry.geoms) == 4
    assert sum(len(p.interiors) for p in geometry.geoms) == 3
    assert np.array_equal(geometry_to_mask(geometry, mask.shape), mask)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="2-D"):
        mask_to_geometry(np.zeros((2, 2, 2), dtype=bool))
    with pytest.raises(ValueError, match="scale"):
        mask_to_geometry(np.ones((2, 2), dtype=bool), scale=0)


def test_geometry_to_mask_matches_an_independent_rasteriser() -> None:
    """Pixel-centre sampling of an odd-shaped polygon with a hole, against matplotlib's Path."""
    angles = np.linspace(0, 2 * np.pi, 23, endpoint=False)
    radii = np.where(np.arange(23) % 2 == 0, 30.0, 13.0)
    star = np.stack([50 + radii * np.cos(angles), 40 + radii * np.sin(angles)], axis=1)
    hole = [(45.3, 35.1), (55.2, 36.7), (50.0, 47.9)]
    polygon = Polygon(star, [hole])
    mask = geometry_to_mask(polygon, (80, 100))

    rows, cols = np.mgrid[:80, :100]
    centres = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], axis=1)
    inside = MplPath(star).contains_points(centres) & ~MplPath(hole).contains_points(centres)
    assert np.array_equal(mask, inside.reshape(80, 100))


def test_geometry_to_mask_clips_and_handles_empty() -> None:
    assert not geometry_to_mask(None, (4, 4)).any()
    mask = geometry_to_mask(box(-10, -10, 2, 3), (5, 5))
    expected = np.zeros((5, 5), dtype=bool)
    expected[:3, :2] = True
    assert np.array_equal(mask, expected)
    lines = shapely.GeometryCollection([box(0, 0, 1, 1), shapely.LineString([(0, 0), (5, 5)])])
    assert geometry_to_mask(lines, (3, 3)).sum() == 1
