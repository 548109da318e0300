"""The fused CPU scan kernel: built at first use, called through `ctypes`, with autograd.

`_scan_kernel.cpp` (shipped in the package) has no torch or Python headers: it is compiled by the
system's C++ compiler (`$CXX`, else `c++` / `g++` / `clang++`) in well under a minute, once per
source, compiler and CPU, into a cache folder (`$PROBEKIT_MAMBA_KERNEL_DIR`, else
`$XDG_CACHE_HOME/probekit/mamba-kernel` or `~/.cache/probekit/mamba-kernel`). The library is
written to a temporary name and renamed into place, so concurrent processes can build it at once.

When it cannot be built or loaded (no compiler, a read-only cache, another platform), one line is
logged on the `probekit_mamba` logger and `probekit_mamba.scan` uses its pure-PyTorch chunked
scan. `PROBEKIT_MAMBA_KERNEL=0` switches the kernel off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, overload

import torch

log = logging.getLogger("probekit_mamba")

_SOURCE = "_scan_kernel.cpp"
# tried in turn: a compiler without -march=native (or without OpenMP's simd pragmas) gets the next
_FLAG_SETS = (["-O3", "-march=native", "-fopenmp-simd"], ["-O3", "-fopenmp-simd"], ["-O3"])
_COMMON = ["-std=c++17", "-fPIC", "-shared", "-pthread"]

__all__ = ["available", "disable_reason", "mamba1_scan", "mamba2_scan"]


def _cache_dir() -> Path:
    if os.environ.get("PROBEKIT_MAMBA_KERNEL_DIR"):
        return Path(os.environ["PROBEKIT_MAMBA_KERNEL_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "probekit" / "mamba-kernel"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_id() -> str:
    """What `-march=native` depends on: the CPU's model and feature flags."""
    text = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features", "model name")):
                    text += line
                if line.strip() == "":
                    break  # the first CPU is enough
    except OSError:
        pass
    return text


def _build(source: str, out: Path, cxx: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src = Path(tmp) / _SOURCE
        src.write_text(source)
        lib = Path(tmp) / out.name
        for flags in _FLAG_SETS:
            proc = subprocess.run([cxx, *flags, *_COMMON, str(src), "-o", str(lib)], capture_output=True, text=True)
            if proc.returncode == 0:
                os.replace(lib, out)  # atomic: a concurrent build of the same source wins or loses whole
                return
            errors.append(proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"])
    raise RuntimeError(f"{cxx} failed: {errors[-1][0]}")


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    for suffix in ("f32", "f64"):
        getattr(lib, f"pk_m1_fwd_{suffix}").argtypes = [i64] * 6 + [ptr] * 14 + [i64]
        getattr(lib, f"pk_m1_bwd_{suffix}").argtypes = [i64] * 6 + [ptr] * 21 + [i64]
        getattr(lib, f"pk_m2_fwd_{suffix}").argtypes = [i64] * 7 + [ptr] * 10 + [i64]
        getattr(lib, f"pk_m2_bwd_{suffix}").argtypes = [i64] * 7 + [ptr] * 14 + [i64]
        for kind in ("m1_fwd", "m1_bwd", "m2_fwd", "m2_bwd"):
            getattr(lib, f"pk_{kind}_{suffix}").restype = ctypes.c_int
    return lib


_reason: str | None = None


@functools.cache
def _library() -> ctypes.CDLL | None:
    global _reason
    _reason = None
    if os.environ.get("PROBEKIT_MAMBA_KERNEL", "1").strip().lower() in ("0", "false", "no", "off"):
        _reason = "switched off by PROBEKIT_MAMBA_KERNEL"
        return None
    try:
        source = resources.files("probekit_mamba").joinpath(_SOURCE).read_text()
        cxx = _compiler()
        if cxx is None:
            raise RuntimeError("no C++ compiler found (set $CXX, or install g++ or clang++)")
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
        key = hashlib.sha256("\0".join([source, cxx, version, _cpu_id(), repr(_FLAG_SETS), repr(_COMMON),
                                         sys.platform]).encode()).hexdigest()[:16]
        path = _cache_dir() / f"scan-{key}.so"
        if not path.exists():
            _build(source, path, cxx)
        return _bind(ctypes.CDLL(str(path)))
    except Exception as e:  # noqa: BLE001 - any failure means "use the PyTorch scan"
        _reason = f"{type(e).__name__}: {e}"
        log.warning("probekit-mamba: the fused CPU scan kernel is unavailable (%s); using the PyTorch "
                    "chunked scan", _reason)
        return None


def available() -> bool:
    """Whether the compiled kernel can be used (builds it on the first call)."""
    return _library() is not None


def disable_reason() -> str | None:
    """Why the kernel is not used (`None` when it is, or before the first `available`)."""
    return _reason


def _p(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _call(name: str, dtype: torch.dtype, *args: Any) -> None:
    lib = _library()
    assert lib is not None
    fn = getattr(lib, f"pk_{name}_{'f64' if dtype == torch.float64 else 'f32'}")
    if fn(*args, torch.get_num_threads()) != 0:
        raise RuntimeError(f"the fused scan kernel ({name}) failed (out of memory?)")


@overload
def _contig(t: torch.Tensor) -> torch.Tensor: ...
@overload
def _contig(t: None) -> None: ...
@overload
def _contig(t: torch.Tensor | None) -> torch.Tensor | None: ...
def _contig(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


@overload
def _rows(t: torch.Tensor) -> torch.Tensor: ...
@overload
def _rows(t: torch.Tensor | None) -> torch.Tensor | None: ...
def _rows(t: torch.Tensor | None) -> torch.Tensor | None:
    """`t` with contiguous last dimension (the kernel reads rows of channels), copied only if needed."""
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


def _strides(*views: torch.Tensor | None) -> ctypes.Array:
    """The (batch, position, channel) strides of 3-d tensors, three per tensor (zeros for an absent one)."""
    values = [s for v in views for s in (v.stride() if v is not None else (0, 0, 0))]
    return (ctypes.c_int64 * len(values))(*values)


class _Mamba1(torch.autograd.Function):
    """Mamba's scan with mamba-ssm's extras: `out = (C . h + D u) * silu(z)`, `dt = softplus(delta + bias)`.

    u, delta, z, out: (b, L, d); A: (d, n); B, C: (b, L, n); D, bias: (d,); init, last: (b, d, n). The
    kernel reads strided tensors whose last dimension is contiguous; others are copied first.
    """

    @staticmethod
    def forward(ctx: Any, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None, bias: torch.Tensor | None,
                init: torch.Tensor | None, softplus: bool, chunk: int, want_states: bool) -> Any:
        A, D, bias, init = _contig(A), _contig(D), _contig(bias), _contig(init)
        u, delta, z, B, C = _rows(u), _rows(delta), _rows(z), _rows(B), _rows(C)
        b, L, d = u.shape
        n = A.shape[1]
        nc = -(-L // chunk)
        out = u.new_empty(b, L, d)
        last = u.new_empty(b, d, n)
        ckpt = u.new_empty(b, nc, d, n) if any(ctx.needs_input_grad) else None
        states = u.new_empty(b, L, d, n) if want_states else None
        strides = _strides(u, delta, z, B, C)
        _call("m1_fwd", u.dtype, b, L, d, n, chunk, int(softplus), *map(_p, (u, delta, z, B, C)), strides,
              *map(_p, (A, D, bias, init, out, last, ckpt, states)))
        ctx.chunk, ctx.softplus, ctx.has_init = chunk, softplus, init is not None
        if ckpt is not None:
            ctx.save_for_backward(u, delta, A, B, C, D, z, bias, ckpt)
        if states is None:
            return out, last
        ctx.mark_non_differentiable(states)
        return out, last, states

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, gout: torch.Tensor, glast: torch.Tensor | None, *_: Any) -> Any:
        u, delta, A, B, C, D, z, bias, ckpt = ctx.saved_tensors
        b, L, d = u.shape
        n = A.shape[1]
        blocks = -(-d // 16)  # the kernel's channel blocks (W in _scan_kernel.cpp)
        glast = _contig(glast)
        gout = _rows(gout)
        gu, gdelta = u.new_empty(b, L, d), u.new_empty(b, L, d)
        gz = u.new_empty(b, L, d) if z is not None else None
        gA, gD, gbias = u.new_empty(b, d, n), u.new_empty(b, d), u.new_empty(b, d)
        gB, gC = u.new_empty(blocks, b, L, n), u.new_empty(blocks, b, L, n)
        ginit = u.new_empty(b, d, n) if ctx.has_init and ctx.needs_input_grad[8] else None
        strides = _strides(u, delta, z, B, C, gout)
        _call("m1_bwd", u.dtype, b, L, d, n, ctx.chunk, int(ctx.softplus), *map(_p, (u, delta, z, B, C, gout)),
              strides, *map(_p, (A, D, bias, ckpt, glast, gu, gdelta, gz, gA, gD, gbias, gB, gC, ginit)))
        return (gu, gdelta, gA.sum(0), gB.sum(0), gC.sum(0), gD.sum(0) if D is not None else None, gz,
                gbias.sum(0) if bias is not None else None, ginit, None, None, None)


class _Mamba2(torch.autograd.Function):
    """Mamba2's scan. x, y: (b, L, h, p); dt: (b, L, h); A: (h,); B, C: (b, L, g, n); init, last: (b, h, p, n)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                C: torch.Tensor, init: torch.Tensor | None, chunk: int, want_states: bool) -> Any:
        x, dt, A, B, C, init = _contig(x), _contig(dt), _contig(A), _contig(B), _contig(C), _contig(init)
        b, L, h, p = x.shape
        g, n = B.shape[2], B.shape[3]
        nc = -(-L // chunk)
        y = x.new_empty(b, L, h, p)
        last = x.new_empty(b, h, p, n)
        ckpt = x.new_empty(b, h, nc, p, n) if any(ctx.needs_input_grad) else None
        states = x.new_empty(b, L, h, p, n) if want_states else None
        _call("m2_fwd", x.dtype, b, L, h, p, g, n, chunk,
              *map(_p, (x, dt, A, B, C, init, y, last, ckpt, states)))
        ctx.chunk, ctx.has_init = chunk, init is not None
        if ckpt is not None:
            ctx.save_for_backward(x, dt, A, B, C, ckpt)
        if states is None:
            return y, last
        ctx.mark_non_differentiable(states)
        return y, last, states

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, gy: torch.Tensor, glast: torch.Tensor | None, *_: Any) -> Any:
        x, dt, A, B, C, ckpt = ctx.saved_tensors
        b, L, h, p = x.shape
        g, n = B.shape[2], B.shape[3]
        gy, glast = _contig(gy), _contig(glast)
        gx, gdt = torch.empty_like(x), torch.empty_like(dt)
        gA = x.new_empty(b, h)
        gB, gC = x.new_empty(b, L, h, n), x.new_empty(b, L, h, n)
        ginit = x.new_empty(b, h, p, n) if ctx.has_init and ctx.needs_input_grad[5] else None
        _call("m2_bwd", x.dtype, b, L, h, p, g, n, ctx.chunk,
              *map(_p, (x, dt, A, B, C, ckpt, gy, glast, gx, gdt, gA, gB, gC, ginit)))
        # the heads of a group share B and C: their gradients add up
        gB, gC = (t.view(b, L, g, h // g, n).sum(3) for t in (gB, gC))
        return gx, gdt, gA.sum(0), gB, gC, ginit, None, None


def mamba1_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                D: torch.Tensor | None = None, z: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                delta_softplus: bool = False, init: torch.Tensor | None = None, *, chunk: int = 32,
                return_states: bool = False) -> tuple[torch.Tensor, ...]:
    """Mamba's scan on the kernel, as mamba-ssm's `selective_scan_fn`: `(out, last)` or `(out, last, states)`.

    `out = (C_t . h_t + D u_t) * silu(z_t)` with `dt = softplus(delta + delta_bias)` (softplus if
    `delta_softplus`). `u`, `delta`, `z`, `out`: (batch, L, d); `A`: (d, n); `B`, `C`:
    (batch, L, n); `D`, `delta_bias`: (d,); `init`, `last`: (batch, d, n); `states`:
    (batch, L, d, n), without gradient. Strided views are read in place when their last dimension is
    contiguous. One dtype (float32 or float64), CPU.
    """
    return _Mamba1.apply(u, delta, A, B, C, D, z, delta_bias, init, delta_softplus, chunk, return_states)


def mamba2_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                init: torch.Tensor | None = None, *, chunk: int = 32,
                return_states: bool = False) -> tuple[torch.Tensor, ...]:
    """Mamba2's scan on the kernel: `(y, last)` or `(y, last, states)`.

    `x`, `y`: (batch, L, heads, p); `dt`: (batch, L, heads); `A`: (heads,); `B`, `C`:
    (batch, L, groups, n); `init`, `last`: (batch, heads, p, n); `states`: (batch, L, heads, p, n),
    without gradient. One dtype (float32 or float64), CPU.
    """
    return _Mamba2.apply(x, dt, A, B, C, init, chunk, return_states)
