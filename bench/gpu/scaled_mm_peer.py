"""The peer of bench_fp8_gemm: torch._scaled_mm with DeepSeek's scales (activations 1x128, weights 128x128),
i.e. cuBLAS's block-scaled FP8 GEMM as PyTorch calls it, BF16 output, and torch's BF16 matmul, on the same
shapes, same machine, same run. CUDA events, median of 20 after 3 warm-ups; random data."""
import sys

import torch


def median_ms(f):
    for _ in range(3):
        f()
    ts = []
    for _ in range(20):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        f()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def main():
    shapes = [(4096, 7168, 2048), (4096, 24576, 1536), (4096, 2048, 7168), (4096, 7168, 16384), (128, 7168, 16384)]
    print(f"torch {torch.__version__}")
    print(f"{'M':>6} {'N':>6} {'K':>6} | {'scaled_mm TF/s':>14} | {'bf16 TF/s':>9}")
    for m, n, k in shapes:
        x = torch.randn(m, k, device="cuda").to(torch.float8_e4m3fn)
        w = (torch.rand(n, k, device="cuda") * 2 - 1).mul(400).to(torch.float8_e4m3fn)
        kb, nb = (k + 127) // 128, (n + 127) // 128
        kb4 = (kb + 3) // 4 * 4
        sa = torch.rand(kb, m, device="cuda").add(0.5).t()  # [M, K/128], strides (1, M)
        sb = torch.rand(nb, kb4, device="cuda").add(0.5).t()  # [K/128 (padded to 4), N/128], strides (1, kb4)
        flop = 2.0 * m * n * k
        try:
            t = median_ms(lambda: torch._scaled_mm(x, w.t(), sa, sb, out_dtype=torch.bfloat16))
            fp8 = f"{flop / (t * 1e-3) / 1e12:14.0f}"
        except Exception as e:  # noqa: BLE001 - report whatever this torch refuses
            fp8 = f"{'error':>14}"
            print(f"  scaled_mm {m}x{n}x{k}: {str(e).splitlines()[0][:200]}", file=sys.stderr)
        xb, wb = torch.randn(m, k, device="cuda", dtype=torch.bfloat16), torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        tb = median_ms(lambda: xb @ wb.t())
        print(f"{m:>6} {n:>6} {k:>6} | {fp8} | {flop / (tb * 1e-3) / 1e12:9.0f}")


if __name__ == "__main__":
    main()
