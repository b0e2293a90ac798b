"""The maths of the model modules: KL, ELBO/IWAE ordering, reparametrisation gradients, shapes."""

import numpy as np
import pytest
import torch

from anomaly_ae.models import build_model
from anomaly_ae.models.vae import VAE, gaussian_kl


def test_closed_form_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3) * 0.5
    std = (0.5 * logvar).exp()
    z = mu + std * torch.randn(200_000, 4, 3)
    log_q = torch.distributions.Normal(mu, std).log_prob(z).sum(-1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    mc = (log_q - log_p).mean(0)
    assert torch.allclose(gaussian_kl(mu, logvar), mc, rtol=0.03, atol=0.02)


def test_kl_is_zero_for_the_prior():
    assert torch.allclose(gaussian_kl(torch.zeros(2, 5), torch.zeros(2, 5)), torch.zeros(2))


def test_iwae_bound_is_at_least_the_elbo():
    torch.manual_seed(0)
    vae = VAE((6,), latent_dim=2, hidden_dims=[16, 8]).eval()
    x = torch.randn(64, 6)
    eps = torch.randn(64, 2)
    nll, kl = vae.elbo_terms(x, eps)
    elbo = -(nll.sum(-1) + kl)
    iwae = vae.iwae_bound(x, eps)
    # Same draws: log-mean-exp of the weights >= their mean, and the analytic KL is the expectation
    # of the sampled one, so on average (and nearly always per row) the IWAE bound is tighter.
    assert iwae.mean() >= elbo.mean()
    assert (iwae >= elbo - 1e-3).float().mean() > 0.9
    # With K draws the bound is log-mean-exp of the weights; K single-draw bounds average to the
    # sampled ELBO, which Jensen's inequality puts below it for every row.
    single = torch.stack([vae.iwae_bound(x, e[None]) for e in eps]).mean(0)
    assert torch.all(iwae >= single - 1e-5)


def test_gradients_flow_through_the_reparametrisation():
    mu = torch.zeros(3, 2, requires_grad=True)
    logvar = torch.zeros(3, 2, requires_grad=True)
    VAE.reparameterize(mu, logvar).pow(2).sum().backward()
    assert mu.grad is not None and logvar.grad is not None
    assert mu.grad.abs().sum() > 0 and logvar.grad.abs().sum() > 0


def test_vae_loss_backpropagates_to_encoder_and_scale():
    torch.manual_seed(0)
    vae = VAE((5,), latent_dim=2, hidden_dims=[8])
    vae.loss(torch.randn(16, 5)).backward()
    assert vae.log_scale.grad.abs().sum() > 0
    assert all(p.grad is not None for p in vae.encoder.parameters())


def test_every_family_builds_dense_and_conv_and_reconstructs_the_shape():
    for family, extra in [("autoencoder", {"corruption": "mask"}), ("vae", {}), ("aae", {})]:
        for shape in [(7,), (1, 8, 8)]:
            model = build_model({"family": family, "input_shape": list(shape), "latent_dim": 3,
                                 "hidden_dims": [16, 8], **extra}).eval()
            x = torch.rand(5, *shape)
            assert model.feature_errors(x)["errors"].shape == (5, int(torch.tensor(shape).prod()))
            assert torch.isfinite(model.loss(x))


def test_recurrent_cells_read_several_steps_and_pad_the_oldest_end():
    from anomaly_ae.models import SERIES_MODELS
    spec = SERIES_MODELS["gru"].spec({"hidden_dims": None, "latent_dim": None}, (37, 3), 500)
    assert spec["steps_per_cell"] == 3  # 37 steps in at most 16 cells: 13 cells, 2 zeros of padding
    model = build_model(spec).eval()
    x = torch.rand(4, 37, 3)
    out = model(x)
    assert out.shape == x.shape and model.cells == 13
    torch.testing.assert_close(model(x[2:3]), out[2:3])  # a window's reconstruction is its own
    # a model saved before cells read several steps has no steps_per_cell: one step a cell
    old = build_model({k: v for k, v in spec.items() if k != "steps_per_cell"})
    assert old.steps_per_cell == 1 and old.encoder.input_size == 3


def test_denoising_corruption_only_while_training():
    model = build_model({"family": "autoencoder", "input_shape": [4], "latent_dim": 2, "hidden_dims": [8],
                         "corruption": "gaussian", "noise": 1.0})
    x = torch.ones(3, 4)
    model.train()
    assert not torch.equal(model.corrupt(x), x)
    model.eval()
    assert torch.equal(model.corrupt(x), x)


def test_pca_from_the_scatter_matrix_reconstructs_as_the_svd_does():
    """Many more rows than inputs (flattened windows): PCA takes the scatter matrix's eigenvectors, which
    reconstruct every row as the SVD's components do."""
    import numpy as np

    from anomaly_ae.models.pca import PCA

    rng = np.random.default_rng(0)
    x = torch.from_numpy((rng.normal(size=(3000, 5)) @ rng.normal(size=(5, 300))
                          + 0.3 * rng.normal(size=(3000, 300))).astype(np.float32))
    fitted = PCA((300,), 64)
    fitted.fit_closed_form(x)
    flat = x.double()
    _, s, vt = torch.linalg.svd(flat - flat.mean(0), full_matrices=False)
    k = int((fitted.components.abs().sum(1) > 0).sum())
    assert k == int(torch.searchsorted((s**2).cumsum(0) / (s**2).sum(), torch.tensor(0.9, dtype=s.dtype))) + 1
    reference = PCA((300,), 64)
    reference.mean.copy_(flat.mean(0).float())
    reference.components[:k] = vt[:k].float()
    torch.testing.assert_close(fitted.feature_errors(x)["errors"], reference.feature_errors(x)["errors"],
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n_reference, n_features", [(10_000, 30), (500, 3), (37, 5), (3, 4)])
def test_nearest_neighbours_equal_float64_brute_force(n_reference, n_features):
    """The CPU search ranks rows by float32 products and picks from a few groups of columns: the
    same neighbours, distances and gaps as float64 brute force (reference sizes with and without
    columns past the last whole group; fewer rows than k), for a row alone as in a batch, and for
    queries that are reference rows (distance 0, where products alone lose precision)."""
    from anomaly_ae.models.neighbors import NearestNeighbors

    rng = np.random.default_rng(n_reference)
    reference = rng.normal(size=(n_reference, n_features)).astype(np.float32) * 10 + 50
    queries = rng.normal(size=(300, n_features)).astype(np.float32) * 10 + 50
    queries[:3] = reference[:3]
    neighbours = NearestNeighbors((n_features,), n_reference, k=5)
    neighbours.set_reference(torch.from_numpy(reference))
    means, gaps = neighbours.distances(torch.from_numpy(queries))

    exact = np.sqrt(np.square(queries[:, None, :].astype(np.float64) - reference[None]).sum(-1))
    order = np.argsort(exact, 1)
    k = min(5, n_reference)
    np.testing.assert_allclose(means.numpy(), np.take_along_axis(exact, order[:, :k], 1).mean(1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gaps.numpy(), np.square(queries - reference[order[:, 0]]), rtol=1e-5, atol=1e-5)
    assert (gaps.numpy()[:3] == 0).all()  # a reference row's nearest is itself, exactly
    alone = torch.cat([neighbours.distances(torch.from_numpy(queries[j:j + 1]))[0] for j in range(20)])
    np.testing.assert_array_equal(alone.numpy(), means.numpy()[:20])


def test_pca_leaves_one_direction_out_when_every_one_is_needed_for_the_variance():
    """Three uncorrelated inputs need all three components for 90% of the variance: kept, every row would
    reconstruct exactly and its score be rounding noise."""
    import numpy as np

    from anomaly_ae.models.pca import PCA

    x = torch.from_numpy(np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32))
    pca = PCA((3,), 3)
    pca.fit_closed_form(x)
    assert int((pca.components.abs().sum(1) > 0).sum()) == 2
    far = torch.tensor([[0.0, 0.0, 0.0], [30.0, -30.0, 30.0]])
    errors = pca.feature_errors(far)["errors"].sum(1)
    assert errors[1] > 100 * max(float(errors[0]), 1e-3)
