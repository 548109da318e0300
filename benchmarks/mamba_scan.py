"""Mamba selective scan on CPU: forward+backward time and peak memory, `reference` vs `cpu-scan`.

The model is the length-generalisation study's Mamba (hidden 16, 8 layers, state 8, expand 2,
conv1d removed), a real ``transformers`` ``MambaModel`` built by ``probekit_mamba.build_mamba``;
inputs are random embeddings, batch 8, length 1024; the loss is a weighted sum of the output.

* ``reference``: transformers' own sequential scan (one indexed step per position; its backward
  is quadratic in the length).
* ``cpu-scan``: probekit-mamba's scan: the fused C++ kernel (``probekit_mamba._kernel``), or with
  ``--no-kernel`` the pure-PyTorch chunked scan it falls back to.

Each backend runs in its own subprocess, so that ``ru_maxrss`` (the peak resident set size) is
that backend's peak; "extra" is the peak minus the resident size just before the timed runs.
Both use the same number of torch threads (``--threads``, default: one per CPU core, torch's own
default; use ``--threads 1`` on a shared machine, where more threads mostly measure the neighbours).
The outputs and the parameter gradients of the two backends are compared at the end.
Target: time ratio reference / cpu-scan >= 50.

Also printed, all measured in the same run:

* the memory bandwidth of this machine: a STREAM-like copy of a 128 MiB float32 tensor with the
  same threads (bytes read + bytes written per second, median of 10);
* the scan alone (``selective_scan`` forward+backward on the study's tensors, 8 layers): its time,
  the bytes it must read and write (inputs, outputs, gradients, its chunk checkpoints), the
  bytes/s that makes and its fraction of the copy bandwidth, and its share of the training step;
* evaluation per token: an eval-mode forward without gradients at 4x the length, time per token
  over the training step's time per token (must be <= 1).

    python benchmarks/mamba_scan.py [--batch 8] [--length 1024] [--repeats 3] [--ref-repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STUDY = {"hidden_size": 16, "num_hidden_layers": 8, "state_size": 8, "expand": 2, "vocab_size": 1}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(backend: str, batch: int, length: int, repeats: int, threads: int, chunk: int, out: str,
          kernel: bool) -> None:
    if not kernel:
        os.environ["PROBEKIT_MAMBA_KERNEL"] = "0"
    import torch
    from probekit_mamba import _kernel, build_mamba

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_mamba(STUDY, backend=backend, use_conv=False, chunk_size=chunk)
    model.train()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, length, STUDY["hidden_size"], generator=gen)
    w = torch.randn(batch, length, STUDY["hidden_size"], generator=gen)

    def step(inputs: torch.Tensor) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        y = model(inputs_embeds=inputs, use_cache=False).last_hidden_state
        (y * w[:, : inputs.shape[1]]).sum().div(inputs.shape[0] * 32).backward()  # O(1) gradients
        return y

    step(x[:, :16])  # warm-up (allocator, lazy imports, the kernel's build) on a short sequence
    base = _rss_mib()
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        y = step(x)
        times.append(time.perf_counter() - t0)
        if i == 0:
            peak = _rss_mib()  # after one forward+backward: later runs only add allocator fragmentation
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    torch.save({"y": y.detach(), "grads": grads}, out)
    result = {"backend": backend, "times": times, "peak_mib": peak, "extra_mib": peak - base,
              "kernel": backend == "cpu-scan" and _kernel.available()}
    if backend == "cpu-scan":
        result.update(scan_alone(batch, length, chunk, max(repeats, 5)))
        result["eval"] = eval_per_token(model, batch, 4 * length, max(repeats, 3))
    print(json.dumps(result))


def scan_alone(batch: int, length: int, chunk: int, repeats: int) -> dict:
    """``selective_scan`` forward+backward on one layer's tensors of the study, times the layers."""
    import torch
    from probekit_mamba import _kernel
    from probekit_mamba.scan import selective_scan

    d, n, layers = STUDY["hidden_size"] * STUDY["expand"], STUDY["state_size"], STUDY["num_hidden_layers"]
    g = torch.Generator().manual_seed(2)
    u, delta, z = (torch.randn(batch, d, length, generator=g) for _ in range(3))
    A = -torch.rand(d, n, generator=g) * 4
    B, C = (torch.randn(batch, n, length, generator=g) for _ in range(2))
    D, bias = torch.randn(d, generator=g), torch.randn(d, generator=g)
    leaves = [t.requires_grad_(True) for t in (u, delta, A, B, C, D, z, bias)]
    gy = torch.randn(batch, d, length, generator=g)

    def one() -> None:
        y = selective_scan(*leaves, True, chunk_size=chunk)
        y.backward(gy)

    one()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(layers):
            one()
        times.append(time.perf_counter() - t0)
    # bytes the scan must move per layer (float32): forward reads u, delta, z, B, C and writes y; the
    # backward reads them and the output gradient again and writes their gradients. Without the kernel the
    # (batch, d, L, n) states go through memory several times more; they are not counted.
    bld, bln = batch * length * d, batch * length * n
    nbytes = 4 * (4 * bld + 2 * bln + 4 * bld + 2 * bln + 3 * bld + 2 * bln)
    if _kernel.available():  # the kernel's own extras: layout copies, checkpoints, partial sums
        blocks, ck = -(-d // 16), batch * -(-length // chunk) * d * n
        nbytes += 4 * (2 * ck + 2 * bld + 2 * blocks * bln)
    return {"scan_times": times, "scan_bytes": layers * nbytes}


def eval_per_token(model: object, batch: int, length: int, repeats: int) -> dict:
    """Eval-mode forward without gradients at ``length``: seconds per call (median) and tokens."""
    import torch

    model.eval()
    x = torch.randn(batch, length, STUDY["hidden_size"], generator=torch.Generator().manual_seed(3))
    times = []
    with torch.no_grad():
        model(inputs_embeds=x[:, :16], use_cache=False)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(inputs_embeds=x, use_cache=False)
            times.append(time.perf_counter() - t0)
    model.train()
    return {"seconds": statistics.median(times), "tokens": batch * length}


def copy_bandwidth(threads: int, mib: int = 128, repeats: int = 10) -> float:
    """STREAM-like copy with ``threads`` torch threads: (bytes read + bytes written) per second, median."""
    import torch

    torch.set_num_threads(threads)
    src = torch.rand(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch the pages
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / statistics.median(times)


def run(backend: str, args: argparse.Namespace, out: Path, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--child", backend, "--batch", str(args.batch), "--length",
           str(args.length), "--repeats", str(repeats), "--threads", str(args.threads), "--chunk",
           str(args.chunk), "--out", str(out)] + (["--no-kernel"] if args.no_kernel else [])
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{backend} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3, help="timed runs of cpu-scan (twice)")
    p.add_argument("--ref-repeats", type=int, default=1, help="timed runs of the (slow) reference")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--chunk", type=int, default=32)
    p.add_argument("--no-kernel", action="store_true", help="cpu-scan on the PyTorch chunked scan (fallback)")
    p.add_argument("--child")
    p.add_argument("--out")
    args = p.parse_args()
    if args.child:
        child(args.child, args.batch, args.length, args.repeats, args.threads, args.chunk, args.out,
              not args.no_kernel)
        return

    import torch

    print(f"study Mamba (hidden 16, 8 layers, state 8, expand 2, no conv1d), batch {args.batch}, "
          f"length {args.length}, forward+backward, {args.threads} torch thread(s), chunk {args.chunk}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    bandwidth = [copy_bandwidth(args.threads)]
    with tempfile.TemporaryDirectory() as tmp:
        # cpu-scan runs before and after the reference, so that a change in the machine's load
        # during the long reference run shows up in both
        fast1 = run("cpu-scan", args, Path(tmp) / "cpu-scan.pt", args.repeats)
        ref = run("reference", args, Path(tmp) / "reference.pt", args.ref_repeats)
        fast2 = run("cpu-scan", args, Path(tmp) / "cpu-scan.pt", args.repeats)
        a = torch.load(Path(tmp) / "cpu-scan.pt", weights_only=True)
        b = torch.load(Path(tmp) / "reference.pt", weights_only=True)
    bandwidth.append(copy_bandwidth(args.threads))
    fast_times = fast1["times"] + fast2["times"]
    t_fast, t_ref = statistics.median(fast_times), statistics.median(ref["times"])
    scan = fast1["kernel"] and "fused C++ kernel" or "PyTorch chunked scan"
    print(f"cpu-scan computes with the {scan}; load average after the runs {os.getloadavg()[0]:.2f}")
    for label, times, r in (("cpu-scan", fast_times, fast1), ("reference", ref["times"], ref)):
        print(f"  {label:9s}: {statistics.median(times):8.3f} s forward+backward (median of {len(times)}: "
              f"{', '.join(f'{t:.2f}' for t in times)}); peak RSS {r['peak_mib']:.0f} MiB, "
              f"+{r['extra_mib']:.0f} MiB over the model at rest")
    dy = (a["y"] - b["y"]).abs().max().item()
    scale = max(g.abs().max().item() for g in b["grads"].values())
    dg = max((a["grads"][k] - b["grads"][k]).abs().max().item() for k in b["grads"])
    print(f"max |output diff| {dy:.2e}; max |gradient diff| {dg:.2e} (largest gradient {scale:.2e})")
    print(f"time ratio reference / cpu-scan: {t_ref / t_fast:.1f}x (target >= 50)")
    print(f"peak extra memory reference / cpu-scan: {ref['extra_mib'] / max(fast1['extra_mib'], 1e-9):.2f}x")

    bw = statistics.median(bandwidth)
    t_scan = statistics.median(fast1["scan_times"] + fast2["scan_times"])
    rate = fast1["scan_bytes"] / t_scan
    print(f"\nmemory bandwidth (copy, {args.threads} thread(s)): {bw / 1e9:.2f} GB/s "
          f"(before and after: {', '.join(f'{x / 1e9:.2f}' for x in bandwidth)})")
    print(f"scan alone, 8 layers forward+backward: {1000 * t_scan:.1f} ms ({100 * t_scan / t_fast:.0f}% of the "
          f"training step), {fast1['scan_bytes'] / 1e6:.1f} MB read and written: {rate / 1e9:.2f} GB/s")
    print(f"fraction of memory bandwidth reached by the scan: {rate / bw:.3f}")
    ev = [f["eval"] for f in (fast1, fast2)]
    per_eval = statistics.median(e["seconds"] for e in ev) / ev[0]["tokens"]
    per_train = t_fast / (args.batch * args.length)
    print(f"per token: training step {1e6 * per_train:.2f} us, evaluation forward at length "
          f"{4 * args.length} {1e6 * per_eval:.2f} us")
    print(f"evaluation / training time per token: {per_eval / per_train:.3f} (must be <= 1)")

if __name__ == "__main__":
    main()
