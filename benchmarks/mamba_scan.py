"""Mamba selective scan on CPU: forward+backward time and peak memory, `reference` vs `cpu-scan`.

The model is the length-generalisation study's Mamba (hidden 16, 8 layers, state 8, expand 2,
conv1d removed), a real ``transformers`` ``MambaModel`` built by ``probekit_mamba.build_mamba``;
inputs are random embeddings, batch 8, length 1024; the loss is the mean square of the output.

* ``reference``: transformers' own sequential scan (one indexed step per position; its backward
  is quadratic in the length).
* ``cpu-scan``: probekit-mamba's chunked scan (chunk 32).

Each backend runs in its own subprocess, so that ``ru_maxrss`` (the peak resident set size) is
that backend's peak; "extra" is the peak minus the resident size just before the timed runs.
Both use the same number of torch threads (``--threads``, default: one per CPU core, torch's own
default; use ``--threads 1`` on a shared machine, where more threads mostly measure the neighbours).
The outputs and the parameter gradients of the two backends are compared at the end.
Target: time ratio reference / cpu-scan >= 20.

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


def child(backend: str, batch: int, length: int, repeats: int, threads: int, chunk: int, out: str) -> None:
    import torch
    from probekit_mamba import build_mamba

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

    step(x[:, :16])  # warm-up (allocator, lazy imports) on a short sequence
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
    print(json.dumps({"backend": backend, "times": times, "peak_mib": peak, "extra_mib": peak - base}))


def run(backend: str, args: argparse.Namespace, out: Path, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--child", backend, "--batch", str(args.batch), "--length",
           str(args.length), "--repeats", str(repeats), "--threads", str(args.threads), "--chunk",
           str(args.chunk), "--out", str(out)]
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
    p.add_argument("--child")
    p.add_argument("--out")
    args = p.parse_args()
    if args.child:
        child(args.child, args.batch, args.length, args.repeats, args.threads, args.chunk, args.out)
        return

    import torch

    print(f"study Mamba (hidden 16, 8 layers, state 8, expand 2, no conv1d), batch {args.batch}, "
          f"length {args.length}, forward+backward, {args.threads} torch thread(s), chunk {args.chunk}")
    with tempfile.TemporaryDirectory() as tmp:
        # cpu-scan runs before and after the reference, so that a change in the machine's load
        # during the long reference run shows up in both
        fast1 = run("cpu-scan", args, Path(tmp) / "cpu-scan.pt", args.repeats)
        ref = run("reference", args, Path(tmp) / "reference.pt", args.ref_repeats)
        fast2 = run("cpu-scan", args, Path(tmp) / "cpu-scan.pt", args.repeats)
        a = torch.load(Path(tmp) / "cpu-scan.pt", weights_only=True)
        b = torch.load(Path(tmp) / "reference.pt", weights_only=True)
    fast_times = fast1["times"] + fast2["times"]
    t_fast, t_ref = statistics.median(fast_times), statistics.median(ref["times"])
    for label, times, r in (("cpu-scan", fast_times, fast1), ("reference", ref["times"], ref)):
        print(f"  {label:9s}: {statistics.median(times):8.3f} s forward+backward (median of {len(times)}: "
              f"{', '.join(f'{t:.2f}' for t in times)}); peak RSS {r['peak_mib']:.0f} MiB, "
              f"+{r['extra_mib']:.0f} MiB over the model at rest")
    dy = (a["y"] - b["y"]).abs().max().item()
    scale = max(g.abs().max().item() for g in b["grads"].values())
    dg = max((a["grads"][k] - b["grads"][k]).abs().max().item() for k in b["grads"])
    print(f"max |output diff| {dy:.2e}; max |gradient diff| {dg:.2e} (largest gradient {scale:.2e})")
    print(f"time ratio reference / cpu-scan: {t_ref / t_fast:.1f}x (target >= 20)")
    print(f"peak extra memory reference / cpu-scan: {ref['extra_mib'] / max(fast1['extra_mib'], 1e-9):.2f}x")


if __name__ == "__main__":
    main()
