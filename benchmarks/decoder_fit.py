"""How much of a prior's reconstruction error is its encoder's: held-out phantoms encoded and
decoded (the reconstruction metric of ``napari-lsr evaluate --task reconstruction``) against
the decoder's own best fit, z optimised on each image (Adam, image-domain L1 in the body,
from the encoder's z). LSR fits z to data and never uses the encoder, so the best fit is the
closer measure of what the decoder can draw.

    python benchmarks/decoder_fit.py [--model PATH] [--n-per-region 16] [--steps 300]

Prints MAE in the body (HU) per region and writes benchmarks/results/decoder_fit.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_lsr.data.phantoms import REGIONS, body_mask
from napari_lsr.evaluate import EVAL_SEED0
from napari_lsr.lsr import ADAM_BETAS
from napari_lsr.model import load_model
from napari_lsr.train import phantom_batch


def mae_in_body(rec_hu: np.ndarray, gt_hu: np.ndarray, body: np.ndarray) -> float:
    """Mean over slices of the MAE inside each slice's body (HU)."""
    return float(np.mean([np.abs(r - g)[b].mean() for r, g, b in zip(rec_hu, gt_hu, body)]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="prior checkpoint (default: the bundled prior)")
    ap.add_argument("--n-per-region", type=int, default=16)
    ap.add_argument("--steps", type=int, default=300, help="Adam steps of the best fit")
    ap.add_argument("--lr", type=float, default=0.02, help="Adam step of the best fit")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "decoder_fit.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    c, n = model.config, args.n_per_region
    rows, t0 = {}, time.perf_counter()
    for k, region in enumerate(REGIONS):
        seeds = range(EVAL_SEED0 + k * n, EVAL_SEED0 + (k + 1) * n)  # evaluate_prior's slices
        gt = np.clip(phantom_batch(seeds, c.image_size, c.pixel_size_mm, (region,)),
                     c.hu_min, c.hu_max).astype(np.float32)
        body = np.stack([body_mask(g) for g in gt])
        x = model.from_hu(torch.from_numpy(gt))[:, None]
        z = model.encode(x)[0]
        with torch.no_grad():
            encoded = model.decode_hu(z).numpy()
        z = z.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=args.lr, betas=ADAM_BETAS)
        inside = torch.from_numpy(body)
        for _ in range(args.steps):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model.decode_normalised(z)
            loss = (out.float()[:, 0] - x[:, 0]).abs()[inside].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            fitted = model.decode_hu(z).numpy()
        rows[region] = {"encoder_mae_hu_body": mae_in_body(encoded, gt, body),
                        "best_fit_mae_hu_body": mae_in_body(fitted, gt, body), "n": n}
        print(f"{region:8s} encode/decode {rows[region]['encoder_mae_hu_body']:6.1f} HU   "
              f"decoder best fit {rows[region]['best_fit_mae_hu_body']:6.1f} HU", flush=True)
    rows["all"] = {key: float(np.mean([r[key] for r in rows.values()]))
                   for key in ("encoder_mae_hu_body", "best_fit_mae_hu_body")}
    print(f"{'all':8s} encode/decode {rows['all']['encoder_mae_hu_body']:6.1f} HU   "
          f"decoder best fit {rows['all']['best_fit_mae_hu_body']:6.1f} HU")
    result = {"model": args.model or "bundled", "steps": args.steps, "lr": args.lr,
              "threads": args.threads, "seconds": time.perf_counter() - t0,
              "units": {"*_mae_hu_body": "HU"}, "rows": rows,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
