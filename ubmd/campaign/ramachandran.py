"""Backbone dihedrals of alanine dipeptide and the quadtree coverage of the Ramachandran plane.

Coverage (docs/science.md, "Ramachandran coverage"): a quadtree over (phi, psi) in
[-180, 180)^2 with levels 0..depth; a node at level h weighs 4**-h and counts once when any
frame falls in it. The sum over visited nodes is normalised by its maximum (depth + 1, every
node visited) so that the coverage lies in [0, 1]. Level 0 is the whole plane, level ``depth`` has 4**depth cells.
"""

from __future__ import annotations

import numpy as np

# ACE-ALA-NME heavy atoms in order C, C, O, N, CA, CB, C, O, N, C (indices into heavy atoms).
PHI_HEAVY = (1, 3, 4, 6)
PSI_HEAVY = (3, 4, 6, 8)


def dihedrals_deg(positions: np.ndarray, quadruples: np.ndarray) -> np.ndarray:
    """Dihedral angles in degrees, [-180, 180), for frames (F, N, 3) and index rows (Q, 4) -> (F, Q)."""
    pos = np.asarray(positions, dtype=float)
    if pos.ndim == 2:
        pos = pos[None]
    q = np.asarray(quadruples, dtype=int).reshape(-1, 4)
    p0, p1, p2, p3 = (pos[:, q[:, k]] for k in range(4))
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1n = b1 / np.linalg.norm(b1, axis=-1, keepdims=True)
    v = b0 - np.sum(b0 * b1n, axis=-1, keepdims=True) * b1n
    w = b2 - np.sum(b2 * b1n, axis=-1, keepdims=True) * b1n
    x = np.sum(v * w, axis=-1)
    y = np.sum(np.cross(b1n, v) * w, axis=-1)
    ang = np.degrees(np.arctan2(y, x))
    return np.where(ang >= 180.0, ang - 360.0, ang)


def backbone_indices(numbers: np.ndarray) -> np.ndarray:
    """(2, 4) atom indices of phi and psi for an ACE-ALA-NME structure given its atomic numbers."""
    numbers = np.asarray(numbers)
    heavy = np.flatnonzero(numbers > 1)
    if heavy.size != 10:
        raise ValueError(
            f"alanine dipeptide (ACE-ALA-NME) has 10 heavy atoms, this structure has {heavy.size}"
        )
    expected = np.array([6, 6, 8, 7, 6, 6, 6, 8, 7, 6])
    if not np.array_equal(numbers[heavy], expected):
        raise ValueError(
            "heavy atoms are not in ACE-ALA-NME order C,C,O,N,CA,CB,C,O,N,C: got "
            f"{numbers[heavy].tolist()}"
        )
    return np.array([heavy[list(PHI_HEAVY)], heavy[list(PSI_HEAVY)]])


def phi_psi(positions: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    """(F, 2) backbone (phi, psi) in degrees for frames of one alanine dipeptide."""
    return dihedrals_deg(positions, backbone_indices(numbers))


def quadtree_coverage(phi_psi_deg: np.ndarray, depth: int = 5) -> float:
    """Weighted fraction of quadtree nodes over [-180,180)^2 visited by the (phi, psi) points."""
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    pts = np.asarray(phi_psi_deg, dtype=float).reshape(-1, 2)
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if pts.size == 0:
        return 0.0
    frac = (np.mod(pts + 180.0, 360.0)) / 360.0  # in [0, 1)
    total = 0.0
    for level in range(depth + 1):
        n = 2**level
        cells = np.minimum((frac * n).astype(np.int64), n - 1)
        visited = np.unique(cells[:, 0] * n + cells[:, 1]).size
        total += visited * 4.0**-level
    return total / (depth + 1)
