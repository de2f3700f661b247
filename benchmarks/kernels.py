"""Time the fast int8 conv products against fp32 channels_last PyTorch; print a markdown table.

    python benchmarks/kernels.py [--repeats 7] [--resnet18-batch 16]

Each direction of each layer shape: the int8 backend (uint8 activations and int8 errors in
channels_last, ``out_exponent`` set as the layer code calls it) against ``F.conv2d`` /
``torch.nn.grad.conv2d_input`` / ``torch.nn.grad.conv2d_weight`` on float32 channels_last
tensors. The "2 planes" rows time what an int8 layer's backward runs (E2's two int8 planes in one
call) against fp32's one product. Runs alternate between the two after a warm-up; the table shows
medians in ms and the ratio int8 / fp32 (below 1 means int8 is faster). Never imported by the
package.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from wageubn import kernels

CL = torch.channels_last

# (name, batch, C_in, H, C_out, k, stride, padding)
RESNET20 = [
    ("r20 16x32² 3x3", 128, 16, 32, 16, 3, 1, 1),
    ("r20 16→32 3x3/2", 128, 16, 32, 32, 3, 2, 1),
    ("r20 16→32 1x1/2", 128, 16, 32, 32, 1, 2, 0),
    ("r20 32x16² 3x3", 128, 32, 16, 32, 3, 1, 1),
    ("r20 32→64 3x3/2", 128, 32, 16, 64, 3, 2, 1),
    ("r20 64x8² 3x3", 128, 64, 8, 64, 3, 1, 1),
]


def resnet18(batch: int):
    return [
        ("r18 64x56² 3x3", batch, 64, 56, 64, 3, 1, 1),
        ("r18 64→128 3x3/2", batch, 64, 56, 128, 3, 2, 1),
        ("r18 64→128 1x1/2", batch, 64, 56, 128, 1, 2, 0),
        ("r18 128x28² 3x3", batch, 128, 28, 128, 3, 1, 1),
        ("r18 256x14² 3x3", batch, 256, 14, 256, 3, 1, 1),
        ("r18 512x7² 3x3", batch, 512, 7, 512, 3, 1, 1),
    ]


def _median_pair(f_int8, f_fp32, repeats: int) -> tuple[float, float]:
    for _ in range(2):
        f_int8()
        f_fp32()
    t8, t32 = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        f_int8()
        t8.append(time.perf_counter() - t)
        t = time.perf_counter()
        f_fp32()
        t32.append(time.perf_counter() - t)
    return statistics.median(t8) * 1e3, statistics.median(t32) * 1e3


def bench(shape, repeats: int):
    _, n, c, h, o, k, s, p = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 128, (n, c, h, h), dtype=torch.uint8, generator=gen)
    x = x.contiguous(memory_format=CL)
    w = torch.randint(-127, 128, (o, c, k, k), dtype=torch.int8, generator=gen)
    ho = (h + 2 * p - k) // s + 1
    e = torch.randint(-127, 128, (n, o, ho, ho), dtype=torch.int8, generator=gen)
    e = e.contiguous(memory_format=CL)
    xf, wf, ef = (t.float().contiguous(memory_format=CL) for t in (x, w, e))
    rows = []
    rows.append(
        ("forward",)
        + _median_pair(
            lambda: kernels.conv2d_forward(x, w, s, p, out_exponent=-14),
            lambda: F.conv2d(xf, wf, stride=s, padding=p),
            repeats,
        )
    )
    rows.append(
        ("input grad",)
        + _median_pair(
            lambda: kernels.conv2d_input_grad(e, w, x.shape, s, p, out_exponent=-14),
            lambda: torch.nn.grad.conv2d_input(x.shape, wf, ef, stride=s, padding=p),
            repeats,
        )
    )
    rows.append(
        ("weight grad",)
        + _median_pair(
            lambda: kernels.conv2d_weight_grad(x, e, w.shape, s, p, out_exponent=-14),
            lambda: torch.nn.grad.conv2d_weight(xf, w.shape, ef, stride=s, padding=p),
            repeats,
        )
    )
    # what an int8 layer's backward runs: E2's two planes (coarse, fine) in one call each —
    # stacked along the batch for the input gradient, side by side (2·O outputs) for the weight
    # gradient on the activations' int8 codes — against fp32's one product
    both = torch.cat([e, e.flip(0)]).contiguous(memory_format=CL)
    side = torch.cat([e, e.flip(0)], dim=1).contiguous(memory_format=CL)
    x8 = x.view(torch.int8)  # codes 0..127: the same values as int8
    exponent = torch.tensor(-14)
    rows.append(
        ("input grad, 2 planes",)
        + _median_pair(
            lambda: kernels.conv2d_input_grad_planes(
                both, w, x.shape, s, p, shift=7, out_exponent=exponent
            ),
            lambda: torch.nn.grad.conv2d_input(x.shape, wf, ef, stride=s, padding=p),
            repeats,
        )
    )
    rows.append(
        ("weight grad, 2 planes",)
        + _median_pair(
            lambda: kernels.conv2d_weight_grad(x8, side, (2 * o, c, k, k), s, p),
            lambda: torch.nn.grad.conv2d_weight(xf, w.shape, ef, stride=s, padding=p),
            repeats,
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--resnet18-batch", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, backend {kernels.available_backends()}, "
        f"median of {args.repeats}\n"
    )
    print("| layer (batch) | direction | int8 ms | fp32 CL ms | int8/fp32 |")
    print("|---|---|---|---|---|")
    for shape in RESNET20 + resnet18(args.resnet18_batch):
        for direction, t8, t32 in bench(shape, args.repeats):
            print(
                f"| {shape[0]} ({shape[1]}) | {direction} | {t8:.2f} | {t32:.2f} | "
                f"{t8 / t32:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
