import itertools

import numpy as np
import pytest

from ubmd.campaign.ramachandran import dihedrals_deg, quadtree_coverage


def test_dihedral_of_known_geometry():
    # trans (180) and a +90 rotation of the last atom around the central bond
    trans = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.5], [-1.0, -1.0, 1.5]])
    assert np.isclose(abs(dihedrals_deg(trans, [[0, 1, 2, 3]])[0, 0]), 180.0)
    gauche = trans.copy()
    gauche[3] = [-1.0, 1.0, 1.5]
    assert np.isclose(abs(dihedrals_deg(gauche, [[0, 1, 2, 3]])[0, 0]), 90.0)


def test_coverage_extremes_and_levels():
    assert quadtree_coverage(np.zeros((0, 2))) == 0.0
    # one point visits one node per level: sum_h 4^-h / (depth + 1)
    one = quadtree_coverage(np.array([[10.0, 20.0]]), depth=5)
    assert np.isclose(one, sum(4.0**-h for h in range(6)) / 6)
    # a dense grid through every deepest cell covers everything
    centers = (np.arange(32) + 0.5) * 360 / 32 - 180
    grid = np.stack(np.meshgrid(centers, centers), -1).reshape(-1, 2)
    assert np.isclose(quadtree_coverage(grid, depth=5), 1.0)
    # wrapping: 180 is the same place as -180
    assert quadtree_coverage(np.array([[180.0, 180.0]])) == quadtree_coverage(
        np.array([[-180.0, -180.0]])
    )


def test_coverage_grows_monotonically():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-180, 180, size=(400, 2))
    covs = [quadtree_coverage(pts[:n]) for n in (1, 10, 100, 400)]
    assert all(a <= b for a, b in itertools.pairwise(covs))
    with pytest.raises(ValueError):
        quadtree_coverage(pts, depth=-1)
