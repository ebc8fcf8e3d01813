"""A diagonal Gaussian mixture over the latent, fitted after training ("ex-post density
estimation", Ghosh et al., ICLR 2020) to the encodings of training slices.

A VAE's encodings do not fill N(0, I): draws from it land between the clusters the anatomy
forms (a thorax, a head, a pelvis) and decode to blobs that are none of them. Drawing from a
mixture fitted to where the encodings really are gives slices that look like the training
anatomy. Only sampling uses it; LSR still starts from u = 0 and optimises u freely.
"""

from __future__ import annotations

import torch

DEFAULT_COMPONENTS = 128  # with 2 048 calibration slices: 16 per component


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
        prec = 1.0 / var
        # log N(x | mean, var) without the constant, as matrix products: (N, k)
        log_p = -0.5 * (x2 @ prec.T - 2.0 * x @ (means * prec).T
                        + (means * means * prec).sum(1) + var.log().sum(1))
        resp = torch.softmax(log_p + log_w, dim=1)
        nk = resp.sum(0).clamp_min(1e-9)
        log_w = (nk / n).log()
        means = (resp.T @ x) / nk[:, None]
        var = ((resp.T @ x2) / nk[:, None] - means * means).clamp_min(0.0) + floor
    return log_w.exp().float(), means.float(), var.sqrt().float()


def sample_diagonal_gmm(weights: torch.Tensor, means: torch.Tensor, stds: torch.Tensor, n: int,
                        generator: torch.Generator | None = None,
                        temperature: float = 1.0) -> torch.Tensor:
    """``n`` draws (n, D): a component by its weight, then mean + temperature * std * noise."""
    k = torch.multinomial(weights, n, replacement=True, generator=generator)
    noise = torch.randn(n, means.shape[1], generator=generator)
    return means[k] + temperature * stds[k] * noise


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
