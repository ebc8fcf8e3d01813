"""Training speed of the prior: seconds per optimiser step, side by side, for the numeric
options (float32 / bfloat16 autocast, channels-last) and architectures, in one process.

One step = forward, ELBO loss, backward, gradient clipping, Adam, on a fixed batch of
phantoms (data generation is timed separately: generating a batch afresh vs drawing it from a
pre-generated bank). Median over ``--repeats`` steps after 3 warm-up steps.

    python benchmarks/train_speed.py [--threads 1 2] [--batch 8] [--repeats 10]

Run it on a quiet machine (nothing else on the cores it uses); writes
benchmarks/results/train_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from napari_lsr.model import VAE, VAEConfig
from napari_lsr.train import elbo_loss, phantom_batch

ARCHS = {
    "conv stem, 128-vector (v1 default)": VAEConfig(),
    "pixel-unshuffle stem, 128-vector": VAEConfig(stem_factor=4, base_channels=32,
                                                  channel_mults=(1, 2, 4, 8)),
    "pixel-unshuffle stem, 128-vector + 16x16x4 spatial": VAEConfig(
        stem_factor=4, base_channels=32, channel_mults=(1, 2, 4, 8), spatial_channels=4,
        spatial_size=16),
}
OPTIONS = {"fp32": (False, False), "fp32 channels_last": (False, True),
           "bf16": (True, False), "bf16 channels_last": (True, True)}


def median_step_s(cfg: VAEConfig, x: torch.Tensor, bf16: bool, channels_last: bool,
                  repeats: int) -> float:
    torch.manual_seed(0)
    model = VAE(cfg).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    ts = []
    for i in range(repeats + 3):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _, _ = elbo_loss(model, x, 0.02, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i >= 3:
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--archs", nargs="*", default=None, help="subset of architecture names")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_speed.json"))
    args = ap.parse_args(argv)

    hu = phantom_batch(range(args.batch), 256, 1.5)
    t0 = time.perf_counter()
    phantom_batch(range(100, 100 + args.batch), 256, 1.5)
    gen_s = time.perf_counter() - t0
    bank = np.rint(hu).astype(np.int16)
    t0 = time.perf_counter()
    for _ in range(20):
        idx = np.sort(np.random.default_rng(0).integers(0, len(bank), args.batch))
        bank[idx].astype(np.float32)
    bank_s = (time.perf_counter() - t0) / 20
    c = VAEConfig()
    x = ((torch.from_numpy(hu) - c.hu_min) / (c.hu_max - c.hu_min)).clamp(0, 1)[:, None]

    rows = []
    archs = {k: v for k, v in ARCHS.items() if not args.archs or k in args.archs}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, cfg in archs.items():
            for opt_name, (bf16, cl) in OPTIONS.items():
                s = median_step_s(cfg, x, bf16, cl, args.repeats)
                rows.append({"threads": threads, "arch": name, "options": opt_name,
                             "s_per_step": s})
                print(f"{threads} thr | {name:52s} | {opt_name:18s} | {s:.3f} s/step", flush=True)
    print(f"data: generating a batch of {args.batch} phantoms {gen_s:.3f} s, drawing it from a "
          f"bank {bank_s * 1e3:.1f} ms")
    result = {"batch": args.batch, "repeats": args.repeats, "rows": rows,
              "data_generate_batch_s": gen_s, "data_bank_batch_s": bank_s,
              "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count(), "loadavg_1min": os.getloadavg()[0],
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
