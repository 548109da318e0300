"""Chunked selective scans for CPUs, in plain PyTorch (autograd works through them).

Two functions with the argument layout of mamba-ssm's kernels, so that a backend can call
either one or the other:

``selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, *,
chunk_size=32, return_last_state=False, return_states=False)``
    Mamba (v1). `u`, `delta`, `z`: (batch, d, L); `A`: (d, n); `B`, `C`: (batch, n, L);
    `D`: (d,). Returns `y` (batch, d, L), plus the final state (batch, d, n) and/or the
    state after every position (batch, L, d, n) when asked.

``ssd_scan(x, dt, A, B, C, chunk_size, D=None, dt_bias=None, dt_softplus=False,
dt_limit=(0, inf), initial_states=None, *, return_final_states=False, return_states=False)``
    Mamba2 (state space duality). `x`: (batch, L, heads, head_dim); `dt`: (batch, L, heads);
    `A`: (heads,); `B`, `C`: (batch, L, groups, n). Returns `y` (batch, L, heads, head_dim),
    plus the final state (batch, heads, head_dim, n) and/or every state (batch, L, heads, head_dim, n).

The recurrence is `h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * x_t` and `y_t = C_t . h_t (+ D x_t)`.
Why chunks: the library's sequential path (`transformers`' `mamba_selective_scan`) indexes one
position of a (batch, d, L, n) tensor per step; the backward of every such index allocates and
fills a tensor of the full size, so its backward is quadratic in L. Here the sequence is cut
into chunks of `chunk_size` positions:

* log-decays `dt * A` (all <= 0) are summed cumulatively inside each chunk; every decay the
  scan multiplies with is `exp` of a difference of those sums that is <= 0 (a "segment sum"),
  so nothing overflows whatever `dt` and `A` are;
* the states inside a chunk start from zero and are computed for all chunks at once
  (Mamba: a recurrence over the `chunk_size` positions, vectorised over chunks, batch, d and n;
  Mamba2: the quadratic "attention-like" form inside a chunk, since its decay is one scalar per
  head);
* the state carried into each chunk is a decayed sum of the earlier chunks' end states, again
  with segment sums over chunks (exponents <= 0), computed in parallel.

Sequence lengths that are not a multiple of `chunk_size` are padded with positions of decay 1
and input 0, which leave the state unchanged, and cut off afterwards.

On CPU tensors both functions run the fused C++ kernel of `probekit_mamba._kernel` when it
can be built (one pass over the sequence with the states kept in cache, and a hand-written
backward that recomputes each chunk's states from a checkpoint; `chunk_size` is then the
checkpoint interval). The chunked PyTorch scan above is the fallback: other devices, no C++
compiler, `PROBEKIT_MAMBA_KERNEL=0`, or per-position states that need a gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from probekit_mamba import _kernel

__all__ = ["linear_recurrence", "segment_sum", "selective_scan", "ssd_scan"]


def segment_sum(x: torch.Tensor) -> torch.Tensor:
    """`out[..., i, j] = x[..., j+1] + ... + x[..., i]` for `j <= i` (0 on the diagonal), else `-inf`.

    Computed with a masked cumulative sum rather than a difference of two cumulative sums, so a
    long run of large log-decays does not cancel catastrophically. With `x <= 0` every finite
    entry is <= 0 and `exp` of it lies in [0, 1].
    """
    t = x.shape[-1]
    x = x[..., None].expand(*x.shape, t)  # [..., i(source), j] -> summed over the source index
    strictly_lower = torch.ones(t, t, dtype=torch.bool, device=x.device).tril(-1)
    x = x.masked_fill(~strictly_lower, 0)
    out = torch.cumsum(x, dim=-2)
    lower = torch.ones(t, t, dtype=torch.bool, device=x.device).tril(0)
    return out.masked_fill(~lower, float("-inf"))


def _pad_len(length: int, chunk_size: int) -> int:
    return (chunk_size - length % chunk_size) % chunk_size


class _LinearRecurrence(torch.autograd.Function):
    """`h[0] = x[0]`, `h[i] = a[i] * h[i-1] + x[i]` along dim 0, with a hand-written backward.

    Why not autograd through a Python loop: that records several graph nodes per step and keeps a
    list of step outputs plus their stacked copy. The backward of a linear recurrence is the same
    recurrence run in reverse (`g[i] = dh[i] + a[i+1] * g[i+1]`), so forward and backward are
    each `len` fused multiply-adds on contiguous slices, and only `a` and `h` are stored.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        a, x = a.contiguous(), x.contiguous()
        h = torch.empty_like(x)
        h[0] = x[0]
        for i in range(1, x.shape[0]):
            torch.addcmul(x[i], a[i], h[i - 1], out=h[i])
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, h = ctx.saved_tensors
        dh = dh.contiguous()
        g = torch.empty_like(dh)  # gradient w.r.t. x: dL/dh[i] including all later steps
        g[-1] = dh[-1]
        for i in range(dh.shape[0] - 2, -1, -1):
            torch.addcmul(dh[i], a[i + 1], g[i + 1], out=g[i])
        da = torch.zeros_like(a)
        da[1:] = g[1:] * h[:-1]
        return da, g


class _ReadOut(torch.autograd.Function):
    """`y = sum_n (local + from_start * starts) * C` without storing the states for the backward.

    `local` and `from_start` are stored anyway (by the recurrence and by `exp`), so saving
    them costs nothing; the states, as large again, are recomputed in the backward instead.
    Shapes: `local`, `from_start` (t, b, d, c, n); `starts` (1, b, d, c, n); `C` (t, b, 1, c, n).
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor, from_start: torch.Tensor, starts: torch.Tensor,
                C: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(local, from_start, starts, C)
        return (torch.addcmul(local, from_start, starts) * C).sum(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        local, from_start, starts, C = ctx.saved_tensors
        need_local, need_from, need_starts, need_c = ctx.needs_input_grad
        gyc = gy[..., None] * C
        g_from = gyc * starts if need_from else None
        g_starts = (gyc * from_start).sum(0, keepdim=True) if need_starts else None
        g_c = (gy[..., None] * torch.addcmul(local, from_start, starts)).sum(2, keepdim=True) if need_c else None
        return (gyc if need_local else None), g_from, g_starts, g_c


def linear_recurrence(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`h[i] = a[i] * h[i-1] + x[i]` along dim 0 from `h[-1] = 0` (same shapes; differentiable)."""
    return _LinearRecurrence.apply(a, x)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    # float32 like the library's paths; float64 inputs stay float64 (exactness tests)
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _kernel_ok(tensors: list[torch.Tensor | None], want_states: bool) -> bool:
    """Whether the fused kernel computes this call (CPU tensors; per-position states only without grad)."""
    present = [t for t in tensors if t is not None]
    if any(t.device.type != "cpu" for t in present):
        return False
    if want_states and torch.is_grad_enabled() and any(t.requires_grad for t in present):
        return False
    return _kernel.available()


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = False, *,
                   chunk_size: int = 32, return_last_state: bool = False, return_states: bool = False,
                   ) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Mamba's selective scan (shapes: module docstring), in float32 (float64 inputs: float64).

    Returns `y` alone, or `(y, last_state)`, `(y, states)` or `(y, last_state, states)`.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    batch, d, length = u.shape
    n = A.shape[-1]
    in_dtype = u.dtype
    cdt = _compute_dtype(u)
    if length > 0 and _kernel_ok([u, delta, A, B, C, D, z, delta_bias], return_states):
        def c(v: torch.Tensor | None) -> torch.Tensor | None:
            return None if v is None else v.to(cdt)

        def lc(v: torch.Tensor) -> torch.Tensor:  # (b, x, L) -> (b, L, x) views, no copies
            return v.to(cdt).transpose(1, 2)

        y, last, *every = _kernel.mamba1_scan(lc(u), lc(delta), A.to(cdt), lc(B), lc(C), c(D),
                                              None if z is None else lc(z), c(delta_bias), delta_softplus,
                                              chunk=chunk_size, return_states=return_states)
        extra = [last] * return_last_state + every
        y = y.transpose(1, 2).to(in_dtype)
        return (y, *(e.to(in_dtype) for e in extra)) if extra else y
    dt = delta.to(cdt)
    if delta_bias is not None:
        dt = dt + delta_bias.to(cdt)[..., None]
    if delta_softplus:
        dt = F.softplus(dt)
    t = min(chunk_size, max(length, 1))
    pad = _pad_len(length, t)
    nc = (length + pad) // t

    # Layout (position-in-chunk, batch, d, chunk, n), so that one position of every chunk is one
    # contiguous slice. Padded positions get dt = 0: decay 1 and input 0.
    dt_c = F.pad(dt, (0, pad)).view(batch, d, nc, t).permute(3, 0, 1, 2).contiguous()  # (t, b, d, c)
    u_c = F.pad(u.to(cdt), (0, pad)).view(batch, d, nc, t).permute(3, 0, 1, 2)
    # (t, b, 1, c, n), made contiguous once: the broadcasts below read them n*d times
    B_c = F.pad(B.to(cdt), (0, pad)).view(batch, n, nc, t).permute(3, 0, 2, 1).contiguous()[:, :, None]
    C_c = F.pad(C.to(cdt), (0, pad)).view(batch, n, nc, t).permute(3, 0, 2, 1).contiguous()[:, :, None]
    log_decay = dt_c[..., None] * A.to(cdt)[None, None, :, None, :]  # (t, b, d, c, n), all <= 0
    inputs = (dt_c * u_c)[..., None] * B_c  # dt_t * B_t * u_t

    # 1. States inside every chunk from a zero start, all chunks at once: a recurrence over the
    #    chunk's t positions (each step one fused multiply-add on a (b, d, c, n) slice).
    local_states = linear_recurrence(torch.exp(log_decay), inputs)  # (t, b, d, c, n)

    # 2. Carry across chunks: the state entering chunk i is the state entering chunk i-1, decayed
    #    over chunk i-1, plus chunk i-1's own end state (again a linear recurrence, over chunks).
    #    Decays from the chunk start are exp of cumulative sums of log-decays (<= 0, in [0, 1]);
    #    dt * A has A constant in time, so the cumulative log-decay is cumsum(dt) * A, a cumulative
    #    sum over the (t, b, d, c) tensor rather than the n times larger one.
    from_start = torch.exp(torch.cumsum(dt_c, dim=0)[..., None] * A.to(cdt)[None, None, :, None, :])
    over_chunk = from_start[-1].permute(2, 0, 1, 3)  # (c, b, d, n)
    ends = local_states[-1].permute(2, 0, 1, 3)
    starts = linear_recurrence(F.pad(over_chunk[:-1], (0, 0, 0, 0, 0, 0, 1, 0)),
                               F.pad(ends[:-1], (0, 0, 0, 0, 0, 0, 1, 0)))  # (c, b, d, n); chunk 0: zero
    starts = starts.permute(1, 2, 0, 3)[None]  # (1, b, d, c, n)

    # 3. Output y_t = C_t . h_t with h_t = local_t + from_start_t * start (the states themselves are
    #    only built when asked for)
    y = _ReadOut.apply(local_states, from_start, starts, C_c)
    y = y.permute(1, 2, 3, 0).reshape(batch, d, nc * t)[..., :length]
    extra = []
    if return_last_state:
        # the padded tail has decay 1 and input 0, so the last padded state is the state after L
        extra.append(torch.addcmul(local_states[-1, :, :, -1], from_start[-1, :, :, -1], starts[0, :, :, -1]))
    if return_states:
        states = torch.addcmul(local_states, from_start, starts)  # (t, b, d, c, n)
        extra.append(states.permute(1, 3, 0, 2, 4).reshape(batch, nc * t, d, n)[:, :length])
    return _finish_mamba1(y, u, D, z, cdt, in_dtype, extra)


def _finish_mamba1(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None,
                   cdt: torch.dtype, in_dtype: torch.dtype, extra: list[torch.Tensor],
                   ) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """`y + D u`, gated by `silu(z)`, and the extra outputs, in the input dtype."""
    if D is not None:
        y = y + u.to(cdt) * D.to(cdt)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(cdt))
    y = y.to(in_dtype)
    extra = [e.to(in_dtype) for e in extra]
    return (y, *extra) if extra else y


def ssd_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             chunk_size: int, D: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None,
             dt_softplus: bool = False, dt_limit: tuple[float, float] = (0.0, float("inf")),
             initial_states: torch.Tensor | None = None, *, return_final_states: bool = False,
             return_states: bool = False) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Mamba2's scan (one decay per head; shapes: module docstring), in float32 (float64 inputs: float64).

    Same arguments as mamba-ssm's `mamba_chunk_scan_combined` (without `z`). Returns `y`
    alone or with the final state and/or the state after every position, in that order.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    batch, length, heads, head_dim = x.shape
    groups, n = B.shape[2], B.shape[3]
    cdt = _compute_dtype(x)
    dt = dt.to(cdt)
    if dt_bias is not None:
        dt = dt + dt_bias.to(cdt)
    if dt_softplus:
        dt = F.softplus(dt)
    dt = torch.clamp(dt, min=dt_limit[0], max=dt_limit[1])
    if length > 0 and _kernel_ok([x, dt, A, B, C, D, dt_bias, initial_states], return_states):
        init = initial_states.to(cdt) if initial_states is not None else None
        y, final, *every = _kernel.mamba2_scan(x.to(cdt), dt, A.to(cdt), B.to(cdt), C.to(cdt), init,
                                               chunk=chunk_size, return_states=return_states)
        if D is not None:
            y = y + x.to(cdt) * D.to(cdt)[:, None]
        extra = [final] * return_final_states + every
        return (y.to(x.dtype), *(e.to(x.dtype) for e in extra)) if extra else y.to(x.dtype)
    B = B.to(cdt).repeat_interleave(heads // groups, dim=2)
    C = C.to(cdt).repeat_interleave(heads // groups, dim=2)
    xf = x.to(cdt)
    t = min(chunk_size, max(length, 1))
    pad = _pad_len(length, t)
    nc = (length + pad) // t

    def chunks(v: torch.Tensor) -> torch.Tensor:  # (b, L, ...) -> (b, c, t, ...)
        v = F.pad(v, (0, 0) * (v.dim() - 2) + (0, pad))
        return v.reshape(batch, nc, t, *v.shape[2:])

    xdt = chunks(xf * dt[..., None])  # (b, c, t, h, p)
    B_c, C_c = chunks(B), chunks(C)  # (b, c, t, h, n)
    log_decay = chunks(dt * A.to(cdt)).permute(0, 3, 1, 2)  # (b, h, c, t), <= 0; padding: 0
    cum = torch.cumsum(log_decay, dim=-1)

    # 1. Inside each chunk (zero start): y_t = sum_{s<=t} exp(S_t - S_s) (C_t . B_s) dt_s x_s
    within = torch.exp(segment_sum(log_decay))  # (b, h, c, t, s)
    scores = torch.einsum("bclhn,bcshn->bhcls", C_c, B_c) * within
    y = torch.einsum("bhcls,bcshp->bclhp", scores, xdt)

    # 2. State at the end of each chunk from a zero start, then the state entering each chunk
    to_end = torch.exp(cum[..., -1:] - cum)  # (b, h, c, t), exponents <= 0
    ends = torch.einsum("bclhn,bhcl,bclhp->bchpn", B_c, to_end, xdt)
    init = (initial_states.to(cdt) if initial_states is not None
            else torch.zeros(batch, heads, head_dim, n, dtype=cdt, device=x.device))
    ends = torch.cat([init[:, None], ends], dim=1)  # (b, c+1, h, p, n); slot 0: the initial state
    chunk_log = F.pad(cum[..., -1], (1, 0))  # (b, h, c+1)
    between = torch.exp(segment_sum(chunk_log))  # (b, h, c+1, c+1)
    starts_all = torch.einsum("bhij,bjhpn->bihpn", between, ends)  # (b, c+1, h, p, n)
    starts, final = starts_all[:, :-1], starts_all[:, -1]

    # 3. Contribution of the carried state: C_t . (exp(S_t) h_start)
    from_start = torch.exp(cum)  # (b, h, c, t)
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", C_c, starts, from_start)
    y = y.reshape(batch, nc * t, heads, head_dim)[:, :length]
    if D is not None:
        y = y + xf * D.to(cdt)[:, None]
    y = y.to(x.dtype)
    extra = []
    if return_final_states:
        extra.append(final.to(x.dtype))
    if return_states:
        # h_t = exp(S_t) h_start + sum_{s<=t} exp(S_t - S_s) dt_s x_s B_s^T  (b, c, t, h, p, n)
        local = torch.einsum("bhcls,bcshp,bcshn->bclhpn", within, xdt, B_c)
        states = local + torch.einsum("bhcl,bchpn->bclhpn", from_start, starts)
        extra.append(states.reshape(batch, nc * t, heads, head_dim, n)[:, :length].to(x.dtype))
    return (y, *extra) if extra else y
