"""A Gaussian mixture over the latent, fitted after training ("ex-post density estimation",
Ghosh et al., ICLR 2020) to the encodings of training slices.

A VAE's encodings do not fill N(0, I): draws from it land between the clusters the anatomy
forms (a thorax, a head, a pelvis) and decode to blobs that are none of them. Drawing from a
mixture fitted to where the encodings really are gives slices that look like the training
anatomy. Each component's covariance is low rank plus diagonal (the component's leading
principal directions, then an independent residual): with a diagonal covariance alone, the
1 024 spatial latent values of a draw vary independently and the decoded outline turns
ragged; the principal directions keep them varying together, as a body's outline does.
Only sampling uses the mixture; LSR still starts from u = 0 and optimises u freely.
"""

from __future__ import annotations

import torch

DEFAULT_COMPONENTS = 128  # with 2 048 calibration slices: 16 per component
DEFAULT_RANK = 16         # principal directions per component (checkpoint: K x R x z_size)


def fit_diagonal_gmm(x: torch.Tensor, k: int, iters: int = 60, seed: int = 0,
                     var_floor: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EM for a ``k``-component Gaussian mixture with diagonal covariances on points ``x``
    (N, D). Returns (weights (k,), means (k, D), stds (k, D)), float32. Each variance is at
    least ``var_floor`` times the data's variance in that dimension (keeps components from
    collapsing onto single points). Deterministic for a given ``seed``."""
    if x.ndim != 2 or len(x) < 2 * k:
        raise ValueError(f"need at least {2 * k} points (N, D) to fit {k} components, got "
                         f"{tuple(x.shape)}")
    x = x.double()
    n, _ = x.shape
    floor = var_floor * x.var(0)
    x2 = x * x
    # start: k-means++ seeds, a few k-means rounds, then each cluster's weight and variance
    means = _kmeans(x, k, torch.Generator().manual_seed(seed))
    label = torch.cdist(x, means).argmin(1)
    resp = torch.nn.functional.one_hot(label, k).double()
    nk = resp.sum(0).clamp_min(1.0)
    log_w = (nk / n).log()
    var = ((resp.T @ x2) / nk[:, None] - means * means).clamp_min(0.0) + floor
    for _ in range(iters):
        resp = torch.softmax(_log_likelihoods(x, log_w.exp(), means, var.sqrt()), dim=1)
        nk = resp.sum(0).clamp_min(1e-9)
        log_w = (nk / n).log()
        means = (resp.T @ x) / nk[:, None]
        var = ((resp.T @ x2) / nk[:, None] - means * means).clamp_min(0.0) + floor
    return log_w.exp().float(), means.float(), var.sqrt().float()


def fit_lowrank_gmm(x: torch.Tensor, k: int, rank: int = DEFAULT_RANK, seed: int = 0,
                    var_floor: float = 1e-2):
    """A ``k``-component mixture on ``x`` (N, D) whose covariances are low rank plus diagonal.
    The diagonal mixture (:func:`fit_diagonal_gmm`) assigns each point to its most likely
    component; each component with at least 3 points then takes its points' mean, the
    ``rank`` leading principal directions of their spread (scaled by their standard
    deviations) and the remaining variance per dimension as its diagonal (at least
    ``var_floor`` times the data's variance); smaller components keep the diagonal fit. Each
    weight is the component's share of the points.
    Returns (weights (k,), means (k, D), residual stds (k, D), factors (k, rank, D)), float32,
    covariance of component j = factors[j].T @ factors[j] + diag(stds[j]^2)."""
    w, means, stds = fit_diagonal_gmm(x, k, seed=seed, var_floor=var_floor)
    x = x.double()
    label = _log_likelihoods(x, w.double(), means.double(), stds.double()).argmax(1)
    count = torch.bincount(label, minlength=k)
    floor = var_floor * x.var(0)
    factors = torch.zeros(k, rank, x.shape[1], dtype=torch.float64)
    means, stds = means.double(), stds.double()
    for j in torch.nonzero(count >= 3).flatten().tolist():
        pts = x[label == j]
        means[j] = pts.mean(0)
        dev = (pts - means[j]) / (len(pts) - 1) ** 0.5
        _, s, vh = torch.linalg.svd(dev, full_matrices=False)
        r = min(rank, len(s))
        factors[j, :r] = s[:r, None] * vh[:r]
        stds[j] = ((dev.square().sum(0) - factors[j].square().sum(0)).clamp_min(0) + floor).sqrt()
    return (count / len(x)).float(), means.float(), stds.float(), factors.float()


def _log_likelihoods(x, weights, means, stds):
    """log(weight) + log N(x | mean, diag(std^2)) without the constant, as matrix products:
    (N, k)."""
    var = stds.square()
    return weights.log() - 0.5 * ((x * x) @ (1.0 / var).T - 2.0 * x @ (means / var).T
                                  + (means * means / var).sum(1) + var.log().sum(1))


def sample_gmm(weights: torch.Tensor, means: torch.Tensor, stds: torch.Tensor, n: int,
               generator: torch.Generator | None = None, temperature: float = 1.0,
               factors: torch.Tensor | None = None) -> torch.Tensor:
    """``n`` draws (n, D): a component j by its weight, then mean_j + temperature * (noise_R @
    factors_j + std_j * noise_D); ``factors`` (k, R, D) or None (a diagonal mixture)."""
    k = torch.multinomial(weights, n, replacement=True, generator=generator)
    spread = stds[k] * torch.randn(n, means.shape[1], generator=generator)
    if factors is not None and factors.shape[1]:
        coef = torch.randn(n, factors.shape[1], generator=generator)
        spread = spread + torch.einsum("nr,nrd->nd", coef, factors[k])
    return means[k] + temperature * spread


def _kmeans(x: torch.Tensor, k: int, generator: torch.Generator, rounds: int = 10) -> torch.Tensor:
    """k-means++ seeding and ``rounds`` Lloyd iterations on x (N, D): centres (k, D)."""
    centres = x[torch.randint(len(x), (1,), generator=generator)]
    for _ in range(k - 1):
        d2 = torch.cdist(x, centres).min(1).values ** 2
        centres = torch.cat([centres, x[torch.multinomial(d2 + 1e-12, 1, generator=generator)]])
    for _ in range(rounds):
        label = torch.cdist(x, centres).argmin(1)
        for j in range(k):
            if (label == j).any():
                centres[j] = x[label == j].mean(0)
    return centres
