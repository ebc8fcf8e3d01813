"""Prior speed: decoder forward+backward (gradient w.r.t. z, frozen weights, as in LSR) at
batch 1 and 8, and one full LSR step at 256x256 / 360 views (decode -> HU -> mu -> project ->
masked squared error -> backward -> Adam), median over repeats. Target: LSR step <= 0.25 s on
the 2-core dev CPU. ``--sweep`` also times untrained decoders of the other architectures (the model card's
speed table).

    python benchmarks/prior.py [--model PATH] [--threads 2] [--repeats 20] [--sweep]

Prints a table and writes benchmarks/results/prior.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import napari_lsr as lsr
from napari_lsr.model import VAE, VAEConfig, load_model

TARGET_S = 0.25
UNSHUFFLE = dict(stem_factor=4, base_channels=32, channel_mults=(1, 2, 4, 8))
SWEEP = {  # untrained decoders, forward+backward at batch 1
    "conv stem 8 x (1..32), 128-vector (v1)": VAEConfig(),
    "conv stem 8 x (1..32) + full-res block": VAEConfig(full_res_block=True),
    "pixel-unshuffle 32 x (1, 2, 4, 8), 128-vector": VAEConfig(**UNSHUFFLE),
    "pixel-unshuffle + 16x16x4 spatial latent": VAEConfig(**UNSHUFFLE, spatial_channels=4),
    "pixel-unshuffle + 16x16x4 + refiner of width 16": VAEConfig(**UNSHUFFLE, spatial_channels=4,
                                                                refine_channels=16),
    "pixel-unshuffle + 32x32x4 spatial latent": VAEConfig(**UNSHUFFLE, spatial_channels=4,
                                                          spatial_size=32),
    "pixel-unshuffle 48 x (1, 2, 4, 8) + 32x32x4": VAEConfig(stem_factor=4, base_channels=48,
                                                         channel_mults=(1, 2, 4, 8),
                                                         spatial_channels=4, spatial_size=32),
}


def median_s(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def decoder_fb(model: VAE, batch: int, repeats: int) -> float:
    z = torch.randn(batch, model.config.z_size, requires_grad=True)

    def step():
        z.grad = None
        model.decode(z).sum().backward()
    return median_s(step, repeats)


def lsr_step(model: VAE, repeats: int) -> tuple[float, float]:
    """(full LSR step, projector forward+backward alone) in seconds."""
    c = model.config
    geom = lsr.ParallelBeam(image_size=c.image_size, pixel_size_mm=c.pixel_size_mm, n_views=360,
                            n_det=367, det_spacing_mm=c.pixel_size_mm, arc_deg=180.0)
    proj = lsr.Projector(geom)
    with torch.no_grad():
        q = proj.forward(lsr.hu_to_mu(model.decode_hu(torch.randn(1, c.z_size))))
    mask = torch.ones_like(q)
    mask[..., :60] = 0.0
    z = torch.zeros(1, c.z_size, requires_grad=True)
    opt = torch.optim.Adam([z], lr=0.05)

    def step():
        opt.zero_grad()
        loss = (mask * (proj.forward(lsr.hu_to_mu(model.decode_hu(z))) - q)).pow(2).sum()
        loss.backward()
        opt.step()
    mu = torch.full((1, c.image_size, c.image_size), 0.02, requires_grad=True)

    def proj_only():
        mu.grad = None
        proj.forward(mu).pow(2).sum().backward()
    return median_s(step, repeats), median_s(proj_only, repeats)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled prior)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--sweep", action="store_true", help="also time other decoder widths")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "prior.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    try:
        model, weights = load_model(a.model), str(a.model or "bundled default")
    except FileNotFoundError:
        model, weights = VAE(VAEConfig()).eval().requires_grad_(False), "untrained (no default)"
    c = model.config
    res = {"weights": weights, "config": {"image_size": c.image_size,
                                          "base_channels": c.base_channels,
                                          "channel_mults": list(c.channel_mults),
                                          "stem_factor": c.stem_factor,
                                          "spatial": [c.spatial_channels, c.spatial_size],
                                          "z_size": c.z_size},
           "decoder_params": model.n_parameters()["decoder"],
           "threads": a.threads, "cpu_count": os.cpu_count(), "cpu": platform.processor(),
           "torch": torch.__version__, "repeats": a.repeats, "load_avg_1min": os.getloadavg()[0]}
    res["decoder_fb_b1_ms"] = 1e3 * decoder_fb(model, 1, a.repeats)
    res["decoder_fb_b8_ms"] = 1e3 * decoder_fb(model, 8, max(3, a.repeats // 4))
    step, proj = lsr_step(model, a.repeats)
    res.update(lsr_step_256_360_ms=1e3 * step, projector_fb_ms=1e3 * proj,
               lsr_step_target_ms=1e3 * TARGET_S, lsr_step_ok=step <= TARGET_S)
    if a.sweep:
        res["sweep"] = []
        for name, cfg in SWEEP.items():
            m = VAE(cfg).eval().requires_grad_(False)
            res["sweep"].append({"name": name, "decoder_params": m.n_parameters()["decoder"],
                                 "decoder_fb_b1_ms": 1e3 * decoder_fb(m, 1, a.repeats)})
    for k, v in res.items():
        if k != "sweep":
            print(f"{k:24s} {v:.1f}" if isinstance(v, float) else f"{k:24s} {v}")
    for s in res.get("sweep", []):
        print(f"  {s['name']:58s}: {s['decoder_fb_b1_ms']:.1f} ms, "
              f"{s['decoder_params'] / 1e6:.2f} M decoder params")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
