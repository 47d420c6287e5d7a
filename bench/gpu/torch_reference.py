#!/usr/bin/env python3
"""PyTorch's time for the work cobatch_gpu_bench measures, on the same device.

cobatch_gpu_bench times cobatch's LSE merge kernel and its paged decode
attention against a device-to-device copy. This script times what a PyTorch
user would write for the same shapes, so that the report can say how the
kernels stand against a widely used implementation, not only against the
copy:

  merge    8 shards x (4096 tokens x 32 heads) rows x head dim 128, f32:
           weights from the LSEs, a weighted sum over the shards, the new LSE
  copy     a device-to-device copy of the bytes the merge reads and writes
  decode   64 requests x 4096 tokens, 32 query / 8 KV heads, head dim 128,
           bf16: scaled_dot_product_attention over contiguous K/V (the fused
           kernels' best case), and over K/V gathered from 16-token pages
           first (what paging costs a framework without a paged kernel)

It also checks the PyTorch merge against float64 so that its figure is of a
correct computation. With --gpu-json (the report gpu-check writes) it adds
cobatch's figures beside PyTorch's and their ratios.

  python3 bench/gpu/torch_reference.py [--gpu-json FILE] [--out FILE]

Exit status: 0 done; 77 no CUDA device visible to PyTorch; 1 an error.
"""

import argparse
import json
import statistics
import sys


def median_ms(torch, fn, warmup=2, samples=7):
    start = torch.cuda.Event(enable_timing=True)
    stop = torch.cuda.Event(enable_timing=True)
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(samples):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-json", help="cobatch_gpu_bench's report to compare with")
    parser.add_argument("--out", help="where to write the figures as JSON")
    args = parser.parse_args()

    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print(f"torch_reference: PyTorch is not importable ({e})", file=sys.stderr)
        return 1
    if not torch.cuda.is_available():
        print("SKIPPED: PyTorch sees no CUDA device")
        return 77
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(7)
    figures = []

    def figure(name, value, unit, what):
        figures.append({"name": name, "value": value, "unit": unit, "what": what})
        print(f"  {name}: {value:.4f} {unit}")

    # --- LSE merge -------------------------------------------------------------
    shards, rows, d = 8, 4096 * 32, 128
    shard_out = torch.randn(shards, rows, d, device=dev, generator=gen)
    shard_lse = torch.randn(shards, rows, device=dev, generator=gen) * 4
    shard_lse[0, :1024] = float("-inf")  # empty shards, as the kernel sees them

    def merge():
        m = shard_lse.amax(0)
        w = torch.exp(shard_lse - m)
        s = w.sum(0)
        out = torch.einsum("sr,srd->rd", w / s, shard_out)
        return out, m + torch.log(s)

    out, lse = merge()
    w64 = torch.softmax(shard_lse.double(), 0)
    ref = torch.einsum("sr,srd->rd", w64, shard_out.double())
    merge_err = ((out.double() - ref).abs().max() / ref.abs().max()).item()
    lse_err = (lse.double() - torch.logsumexp(shard_lse.double(), 0)).abs().max().item()
    if not (merge_err < 1e-5 and lse_err < 1e-4):
        print(f"torch_reference: the PyTorch merge is off (rel {merge_err}, lse {lse_err})", file=sys.stderr)
        return 1
    merge_ms = median_ms(torch, merge)
    figure("torch_lse_merge_ms", merge_ms, "ms", "PyTorch ops: amax, exp, sum, einsum, log (f32)")
    moved = (shards * rows * (d + 1) + rows * (d + 1)) * 4
    src = torch.empty(moved // 2, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    copy_ms = median_ms(torch, lambda: dst.copy_(src))
    figure("torch_copy_ms", copy_ms, "ms", "device-to-device copy of the bytes the merge reads and writes")
    figure("torch_copy_gbps", moved / (copy_ms * 1e6), "GB/s", "bytes read + written per second")
    figure("torch_lse_merge_bw_ratio", copy_ms / merge_ms, "ratio", "PyTorch merge throughput / copy throughput")
    del shard_out, shard_lse, src, dst, ref, w64, out, lse

    # --- decode attention ------------------------------------------------------
    reqs, ctx, qo, kvh, page = 64, 4096, 32, 8, 16
    scale = 0.088388
    q = torch.randn(reqs, qo, 1, d, device=dev, dtype=torch.bfloat16, generator=gen)
    k = torch.randn(reqs, kvh, ctx, d, device=dev, dtype=torch.bfloat16, generator=gen)
    v = torch.randn(reqs, kvh, ctx, d, device=dev, dtype=torch.bfloat16, generator=gen)

    def sdpa(kk, vv):
        return F.scaled_dot_product_attention(q, kk, vv, scale=scale, enable_gqa=True)

    o = sdpa(k, v)
    # float32 reference on a slice: the fused kernels must be right too.
    kr = k[:4].float().repeat_interleave(qo // kvh, dim=1)
    vr = v[:4].float().repeat_interleave(qo // kvh, dim=1)
    p = torch.softmax(q[:4].float() @ kr.transpose(-1, -2) * scale, -1)
    attn_err = (o[:4].float() - p @ vr).abs().max().item()
    if not attn_err < 2e-2:
        print(f"torch_reference: PyTorch's decode attention is off ({attn_err})", file=sys.stderr)
        return 1
    kv_bytes = reqs * ctx * 2 * kvh * d * 2
    decode_ms = median_ms(torch, lambda: sdpa(k, v))
    figure("torch_decode_sdpa_ms", decode_ms, "ms", "scaled_dot_product_attention, contiguous K/V, bf16")
    figure("torch_decode_sdpa_gbps", kv_bytes / (decode_ms * 1e6), "GB/s", "KV bytes read per second")

    # The same K/V in pages [pages][page][kv heads][d], pages shuffled, as a
    # paged cache holds them; PyTorch has to gather them before it can run.
    pages_per_req = ctx // page
    order = torch.randperm(reqs * pages_per_req, device=dev, generator=gen)
    k_pages = torch.empty(reqs * pages_per_req, page, kvh, d, device=dev, dtype=torch.bfloat16)
    v_pages = torch.empty_like(k_pages)
    k_pages[order] = k.permute(0, 2, 1, 3).reshape(reqs * pages_per_req, page, kvh, d)
    v_pages[order] = v.permute(0, 2, 1, 3).reshape(reqs * pages_per_req, page, kvh, d)
    table = order.view(reqs, pages_per_req)

    def paged():
        kk = k_pages[table].view(reqs, ctx, kvh, d).transpose(1, 2)
        vv = v_pages[table].view(reqs, ctx, kvh, d).transpose(1, 2)
        return sdpa(kk, vv)

    paged_err = (paged().float() - o.float()).abs().max().item()
    if not paged_err < 1e-2:
        print(f"torch_reference: the paged gather does not reproduce the contiguous K/V ({paged_err})", file=sys.stderr)
        return 1
    paged_ms = median_ms(torch, paged)
    figure("torch_decode_paged_ms", paged_ms, "ms", "gather K/V from 16-token pages, then scaled_dot_product_attention")
    figure("torch_decode_paged_gbps", kv_bytes / (paged_ms * 1e6), "GB/s", "KV bytes read per second")

    report = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0),
        "figures": figures,
    }
    if args.gpu_json:
        with open(args.gpu_json) as f:
            ours = {x["name"]: x["value"] for x in json.load(f)["figures"]}
        mine = {x["name"]: x["value"] for x in figures}
        comparisons = []

        def compare(what, cobatch_key, torch_key):
            if cobatch_key in ours and ours[cobatch_key] > 0:
                c = {"what": what, "cobatch_ms": ours[cobatch_key], "torch_ms": mine[torch_key],
                     "speedup": mine[torch_key] / ours[cobatch_key]}
                comparisons.append(c)
                print(f"  {what}: cobatch {c['cobatch_ms']:.4f} ms, PyTorch {c['torch_ms']:.4f} ms, "
                      f"speedup {c['speedup']:.2f}")

        compare("LSE merge", "gpu_lse_merge_ms", "torch_lse_merge_ms")
        compare("decode, one work item per request vs contiguous SDPA", "gpu_decode_attention_ms",
                "torch_decode_sdpa_ms")
        compare("decode, default split plan vs contiguous SDPA", "gpu_decode_attention_split_ms",
                "torch_decode_sdpa_ms")
        compare("decode, default split plan vs paged gather + SDPA", "gpu_decode_attention_split_ms",
                "torch_decode_paged_ms")
        report["comparisons"] = comparisons
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
