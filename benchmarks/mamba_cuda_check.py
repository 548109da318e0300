"""Check probekit-mamba's `cuda` backend (mamba-ssm kernels) against `reference` on a GPU.

Needs a CUDA GPU and ``pip install 'probekit-mamba[cuda]'`` (mamba-ssm, causal-conv1d). For Mamba
and Mamba2 configs (with and without conv1d), builds one model, runs forward+backward with the
``reference`` backend (transformers' pure-PyTorch path) and with ``cuda``, and prints the max abs
difference of the outputs, of the final SSM states and of every parameter gradient, plus the
forward+backward time of each backend (and of ``cpu-scan`` on the same GPU, for comparison).
Exits with status 1 when a difference exceeds the tolerance (fp32: outputs 1e-4, gradients 1e-3
relative to the largest gradient; mamba-ssm accumulates in a different order).

    python benchmarks/mamba_cuda_check.py [--batch 4] [--length 512]
"""

from __future__ import annotations

import argparse
import sys
import time

CONFIGS = {
    "mamba (study size)": dict(hidden_size=16, num_hidden_layers=8, state_size=8, expand=2, vocab_size=64),
    "mamba (130m shape, 2 layers)": dict(hidden_size=768, num_hidden_layers=2, state_size=16, expand=2,
                                         vocab_size=512),
    "mamba2": dict(model_type="mamba2", hidden_size=64, num_hidden_layers=2, state_size=16, expand=2,
                   num_heads=8, head_dim=16, n_groups=1, chunk_size=64, vocab_size=64),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--length", type=int, default=512)
    args = p.parse_args()

    import torch
    from probekit_mamba import build_mamba, set_backend
    from probekit_mamba._backends import mamba_ssm_available

    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to check (the cuda backend runs on GPUs only)")
        return 0
    if not mamba_ssm_available():
        print("mamba-ssm cannot be imported: pip install 'probekit-mamba[cuda]'")
        return 1
    print(f"GPU: {torch.cuda.get_device_name()}, batch {args.batch}, length {args.length}, fp32")
    failed = False
    for label, cfg in CONFIGS.items():
        for use_conv in (True, False):
            torch.manual_seed(0)
            model = build_mamba(cfg, backend="reference", use_conv=use_conv).cuda().train()
            gen = torch.Generator(device="cuda").manual_seed(1)
            ids = torch.randint(0, cfg["vocab_size"], (args.batch, args.length), device="cuda", generator=gen)
            w = torch.randn(args.batch, args.length, cfg["hidden_size"], device="cuda", generator=gen)
            results = {}
            for backend in ("reference", "cuda", "cpu-scan"):
                set_backend(model, backend)
                for _ in range(2):  # the first run compiles Triton kernels: time the second
                    finals: list = []
                    hooks = [layer.mixer.ssm_state.register_forward_hook(
                        lambda m, a, o, finals=finals: finals.append(o.detach())) for layer in model.layers]
                    model.zero_grad(set_to_none=True)
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    y = model(input_ids=ids, use_cache=False).last_hidden_state
                    (y * w).mean().backward()
                    torch.cuda.synchronize()
                    elapsed = time.perf_counter() - t0
                    for h in hooks:
                        h.remove()
                grads = {n: q.grad.detach().clone() for n, q in model.named_parameters()
                         if q.grad is not None}
                results[backend] = (y.detach(), finals, grads, elapsed)
            ref_y, ref_s, ref_g, ref_t = results["reference"]
            y, s, g, t = results["cuda"]
            dy = (y - ref_y).abs().max().item()
            ds = max((a - b).abs().max().item() for a, b in zip(s, ref_s))
            scale = max(v.abs().max().item() for v in ref_g.values())
            dg = max((g[k] - ref_g[k]).abs().max().item() for k in ref_g) / scale
            ok = dy <= 1e-4 and ds <= 1e-4 and dg <= 1e-3
            failed |= not ok
            print(f"{label:30s} conv={use_conv!s:5s} |dy| {dy:.1e} |d state| {ds:.1e} |d grad|/max {dg:.1e} "
                  f"{'OK' if ok else 'FAIL'}; fwd+bwd s: reference {ref_t:.3f}, cuda {t:.3f}, "
                  f"cpu-scan {results['cpu-scan'][3]:.3f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
