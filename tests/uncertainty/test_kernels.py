"""Posterior and distance uncertainties against explicit formulas; GMM against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from ubmd.uncertainty.gmm import GMMHead
from ubmd.uncertainty.kernels import DistanceHead, PosteriorHead, feature_scale


def test_posterior_equals_explicit_matrix_formula():
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(7, 5, generator=gen, dtype=torch.float64) * 3.0
    query = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    query[0] = train[2]  # a training point: small but non-zero posterior
    sigma = 0.3
    head = PosteriorHead.fit(train, sigma=sigma)
    s = 1.0 / torch.sqrt(train.pow(2).sum(1).mean())
    phi_t, phi_q = s * train, s * query
    inv = torch.linalg.inv(phi_t.T @ phi_t + sigma**2 * torch.eye(5, dtype=torch.float64))
    expected = torch.sqrt(sigma**2 * torch.einsum("nk,kl,nl->n", phi_q, inv, phi_q))
    torch.testing.assert_close(head(query), expected, rtol=1e-10, atol=0)
    # Fewer training points than dimensions: a training point's uncertainty is at most σ
    # (leverage <= 1), a direction the data never saw keeps the prior ||φ̃||.
    few = PosteriorHead.fit(train[:3], sigma=1e-2)
    seen, unseen = train[1:2], torch.linalg.svd(train[:3]).Vh[-1:]  # unseen ⟂ training span
    assert few(seen)[0] <= 1e-2
    torch.testing.assert_close(few(unseen)[0], few.scale * unseen.norm())


def test_posterior_rejects_bad_sigma_and_empty_training():
    with pytest.raises(ValueError, match="sigma"):
        PosteriorHead.fit(torch.ones(3, 2), sigma=0.0)
    with pytest.raises(ValueError, match="non-empty"):
        feature_scale(torch.zeros(0, 4))
    with pytest.raises(ValueError, match="all zero"):
        feature_scale(torch.zeros(3, 4))


def test_distance_equals_brute_force_with_chunks():
    gen = torch.Generator().manual_seed(1)
    train = torch.randn(50, 6, generator=gen, dtype=torch.float64)
    query = torch.randn(9, 6, generator=gen, dtype=torch.float64)
    head = DistanceHead.fit(train)
    head.chunk_size = 7  # several chunks, last one partial
    s = feature_scale(train)
    expected = torch.cdist(s * query, s * train).min(dim=1).values
    torch.testing.assert_close(head(query), expected, rtol=1e-12, atol=1e-12)
    assert float(head(train[:3]).max()) < 1e-6


def test_gmm_matches_sklearn_score_samples():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (300, 3)), rng.normal(4, 0.5, (200, 3))])
    gm = GaussianMixture(n_components=2, covariance_type="full", random_state=0).fit(x)
    head = GMMHead.from_sklearn(gm)
    q = rng.normal(2, 2, (40, 3))
    nll = head.negative_log_likelihood(torch.as_tensor(q))
    np.testing.assert_allclose(nll.numpy(), -gm.score_samples(q), rtol=1e-10, atol=1e-10)
    # The reported uncertainty is −log p shifted to be >= 0 (conformal scores need u > 0).
    u = head(torch.as_tensor(q))
    assert float(u.min()) >= 0.0
    np.testing.assert_allclose((nll - u).numpy(), float(head.nll_floor()), rtol=1e-12)
    # The floor really bounds −log p from below: the densest training points stay above it.
    assert float(head.negative_log_likelihood(torch.as_tensor(gm.means_)).min()) > float(
        head.nll_floor()
    )


def test_gmm_fit_bic_choice_and_bad_input():
    rng = np.random.default_rng(1)
    centers = np.array([[0, 0], [6, 0], [0, 6]])
    x = np.concatenate([rng.normal(c, 0.4, (150, 2)) for c in centers])
    head = GMMHead.fit(torch.as_tensor(x), n_components=(1, 2, 3, 5), seed=0)
    assert head.means.shape[0] == 3  # BIC picks the true number of clusters
    with pytest.raises(ValueError, match="exceed"):
        GMMHead.fit(torch.as_tensor(x[:4]), n_components=8)
    bad = torch.as_tensor(x).clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        GMMHead.fit(bad, n_components=2)
