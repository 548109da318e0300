"""Scan backends for the real `transformers` Mamba / Mamba2 models, and a builder.

Public functions (also importable as `probekit_mamba.build_mamba` etc.):

    build_mamba(config: dict | PretrainedConfig, *, backend="auto", use_conv=True,
                chunk_size=32, arch=None, head=False) -> MambaModel | Mamba2Model | ...ForCausalLM
    set_backend(model: nn.Module, backend: str, *, use_conv: bool | None = None,
                chunk_size: int | None = None) -> nn.Module
    get_backend(model: nn.Module) -> str | None
    available_backends() -> list[str]
    resolve_backend(backend: str, device: torch.device | str = "cpu") -> str

`set_backend` works on any module that contains `transformers`' `MambaMixer` or
`Mamba2Mixer` instances (a `MambaModel`, a `MambaForCausalLM` or a model that embeds one):
it replaces the `forward` of every mixer *instance* with one that runs the library's own
projections, convolution, gate and norm, and only swaps the selective scan. The model keeps its
class, parameters and `state_dict`; `save_pretrained` / `from_pretrained` are unchanged.

Backends:

`cpu-scan`
    `probekit_mamba.scan.selective_scan` / `ssd_scan`: on CPU tensors a fused C++ kernel built at
    first use (`probekit_mamba._kernel`), else a chunked scan in plain PyTorch with autograd (any
    device; the fallback where no C++ compiler is found).
`cuda`
    mamba-ssm's kernels (`selective_scan_fn`, `mamba_chunk_scan_combined`) and causal-conv1d
    when installed; CUDA tensors only (`pip install probekit-mamba[cuda]`).
`reference`
    `transformers`' own pure-PyTorch path (the sequential scan for Mamba, the chunked torch scan
    for Mamba2), also when mamba-ssm is installed. Slow; kept for equality checks.
`auto`
    `cuda` for CUDA tensors when mamba-ssm is importable, else `cpu-scan`; decided at every
    forward from the device of the inputs.

`use_conv=False` bypasses the mixer's depthwise `conv1d` (identity; the SiLU after it stays),
the "conv1d removed" model of the length-generalisation study. The conv weights stay in the model
(unused) so that checkpoints keep the library's layout; the choice is recorded in
`model.config.probekit_use_conv` and saved with `save_pretrained`.

SSM states for capture: every mixer gets two identity submodules, `mixer.ssm_state` (called
with the recurrent state after the sequence: Mamba (batch, d_inner, n); Mamba2
(batch, heads, head_dim, n)) and `mixer.ssm_states` (called with the state after every
position: (batch, L, ...)). A forward hook on them (what `probekit._capture` does) sees the
states. The per-position states are only computed when a hook is registered on
`mixer.ssm_states` (they are L times larger), always by the chunked scan of
`probekit_mamba.scan`, whichever backend computes the output.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import types
from typing import Any

import torch
from torch import nn

from probekit_mamba import scan as _scan

BACKENDS = ("auto", "cuda", "cpu-scan", "reference")
DEFAULT_CHUNK = 32

# A mixer is an instance of transformers' MambaMixer / Mamba2Mixer, whose attributes (set in its __init__, plus
# the `_probekit_*` ones set_backend adds) nn.Module types as `Tensor | Module`: the functions that patch or
# replace the library's forward type it `Any` instead (MixerLike).
MixerLike = Any

__all__ = ["BACKENDS", "available_backends", "build_mamba", "get_backend", "mamba_ssm_available",
           "resolve_backend", "set_backend"]


# -- what is installed -------------------------------------------------------------------------
@functools.cache
def _mamba_ssm() -> Any:
    """mamba-ssm's scan functions, or `None` when it cannot be imported."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception:  # noqa: BLE001 - any import failure (no CUDA build, missing triton) means "absent"
        return None
    return types.SimpleNamespace(selective_scan_fn=selective_scan_fn,
                                 mamba_chunk_scan_combined=mamba_chunk_scan_combined)


def mamba_ssm_available() -> bool:
    """Whether mamba-ssm's kernels can be imported (they also need a CUDA GPU to run)."""
    return _mamba_ssm() is not None


def available_backends() -> list[str]:
    """Backends usable in this environment (`cuda` only with mamba-ssm and a CUDA device)."""
    names = ["cpu-scan", "reference"]
    if mamba_ssm_available() and torch.cuda.is_available():
        names.insert(0, "cuda")
    return names


def resolve_backend(backend: str, device: torch.device | str = "cpu") -> str:
    """The concrete backend `auto` stands for on `device` (other names are checked and returned)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown Mamba backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "cuda" if torch.device(device).type == "cuda" and mamba_ssm_available() else "cpu-scan"
    return backend


def _check_cuda(device: torch.device) -> None:
    if not mamba_ssm_available():
        raise RuntimeError("Mamba backend 'cuda' needs mamba-ssm's kernels, which cannot be imported here. "
                           "Install them on a machine with a CUDA GPU (pip install 'probekit-mamba[cuda]'), "
                           "or use backend 'cpu-scan' / 'auto'.")
    if device.type != "cuda":
        raise RuntimeError(f"Mamba backend 'cuda' runs on CUDA tensors only, got tensors on '{device}'. "
                           "Move the model to a GPU, or use backend 'cpu-scan' / 'auto'.")


# -- library functions ---------------------------------------------------------------------------
@functools.cache
def _lib(version: int) -> types.ModuleType:
    name = "mamba" if version == 1 else "mamba2"
    return importlib.import_module(f"transformers.models.{name}.modeling_{name}")


def _torch_path(fn: Any) -> Any:
    """The library's pure-PyTorch function under its kernel-dispatching wrapper.

    `transformers` wraps e.g. `mamba_selective_scan` so that it calls mamba-ssm when that is
    installed; `functools.wraps` keeps the torch function as `__wrapped__`.
    """
    return inspect.unwrap(fn)


def _conv(self: MixerLike, version: int, x: torch.Tensor, conv_state: Any, cache: Any, seq_len: int, kernels: bool,
          kwargs: dict[str, Any]) -> torch.Tensor:
    """The mixer's depthwise causal convolution and activation (or only the activation without conv1d),
    as transformers' Mamba (`version` 1) and Mamba2 (2) forwards compute them."""
    if not self._probekit_use_conv:
        return self.act(x)
    if conv_state is not None and seq_len == 1 and not cache.is_recording_past(self.layer_idx):
        return _lib_fn(version, "causal_conv1d_update", kernels)(
            x, conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation=self.activation)
    if cache is not None:
        x = cache.update_conv_state(x, self.layer_idx, conv_kernel_size=self.conv_kernel_size)
    x = _lib_fn(version, "causal_conv1d_fn", kernels)(
        x, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation=self.activation, **kwargs)
    return x[:, :, -seq_len:] if cache is not None else x


def _lib_fn(version: int, name: str, kernels: bool) -> Any:
    fn = getattr(_lib(version), name)
    return fn if kernels else _torch_path(fn)


def _mixer_classes() -> tuple[type, type]:
    return _lib(1).MambaMixer, _lib(2).Mamba2Mixer


def _hooked(module: nn.Module) -> bool:
    from torch.nn.modules import module as module_mod

    return bool(module._forward_hooks or module._forward_pre_hooks
                or module_mod._global_forward_hooks or module_mod._global_forward_pre_hooks)


def _device_backend(mixer: MixerLike, device: torch.device) -> str:
    backend = resolve_backend(mixer._probekit_backend, device)
    if backend == "cuda":
        _check_cuda(device)
    return backend


# -- Mamba (v1) mixer forward ----------------------------------------------------------------------
def _mamba_forward(self: MixerLike, hidden_states: torch.Tensor, cache: Any = None,
                   attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
    """`MambaMixer.forward` of transformers with the scan taken from the chosen backend."""
    lib = _lib(1)
    backend = _device_backend(self, hidden_states.device)
    kernels = backend == "cuda"
    seq_len = hidden_states.shape[1]
    dtype = hidden_states.dtype
    if cache is not None:
        conv_state = cache.get_conv_state(self.layer_idx, state_idx=0)
        recurrent_state = cache.get_recurrent_state(self.layer_idx, state_idx=0)
    else:
        conv_state, recurrent_state = None, None

    # 1. gated projection
    hidden_states = lib.apply_mask_to_padding_states(hidden_states, attention_mask)
    projected_states = self.in_proj(hidden_states).transpose(1, 2)
    A = -torch.exp(self.A_log.float())
    hidden_states_B_C, gate = projected_states.chunk(2, dim=1)

    # 2. depthwise causal convolution (or its bypass), then the activation
    hidden_states_B_C = _conv(self, 1, hidden_states_B_C, conv_state, cache, seq_len, kernels, kwargs)

    # 3. selective scan
    hidden_states_B_C = lib.apply_mask_to_padding_states(hidden_states_B_C.transpose(1, 2), attention_mask)
    time_step, B, C = torch.split(self.x_proj(hidden_states_B_C),
                                  [self.time_step_rank, self.ssm_state_size, self.ssm_state_size], dim=-1)
    time_step = self.dt_proj.weight @ time_step.transpose(1, 2)
    time_proj_bias = self.dt_proj.bias.float() if self.dt_proj.bias is not None else None
    u = hidden_states_B_C.transpose(1, 2)

    if recurrent_state is not None and seq_len == 1:
        # one decoding step with a cache: the library's state update
        scan_output = _lib_fn(1, "mamba_selective_state_update", kernels)(
            recurrent_state, u[..., 0], time_step[..., 0], A, B[:, 0], C[:, 0], self.D, z=gate[..., 0],
            dt_bias=time_proj_bias, dt_softplus=True).unsqueeze(-1)
    else:
        Bt, Ct = B.transpose(1, 2), C.transpose(1, 2)
        want_states = _hooked(self.ssm_states)
        states = None
        if backend == "cpu-scan":
            result = _scan.selective_scan(u, time_step, A, Bt, Ct, self.D.float(), gate, time_proj_bias, True,
                                          chunk_size=self._probekit_chunk_size, return_last_state=True,
                                          return_states=want_states)
            scan_output, final_state = result[0], result[1]
            if want_states:
                states = result[2]
        elif backend == "cuda":
            scan_output, final_state = _mamba_ssm().selective_scan_fn(
                u.contiguous(), time_step.contiguous(), A, Bt.contiguous(), Ct.contiguous(), self.D.float(),
                gate.contiguous(), time_proj_bias, delta_softplus=True, return_last_state=True)
        else:
            scan_output, final_state = _torch_path(lib.mamba_selective_scan)(
                u, time_step, A, Bt, Ct, D=self.D.float(), z=gate, delta_bias=time_proj_bias,
                delta_softplus=True, return_last_state=True, use_mambapy=self.use_mambapy,
                use_associative_scan=self.use_associative_scan)
        if want_states and states is None:
            _, states = _scan.selective_scan(u, time_step, A, Bt, Ct, None, None, time_proj_bias, True,
                                             chunk_size=self._probekit_chunk_size, return_states=True)
        if cache is not None:
            cache.update_recurrent_state(final_state, self.layer_idx)
        self.ssm_state(final_state)
        if want_states:
            self.ssm_states(states)

    # 4. output projection
    return self.out_proj(scan_output.transpose(1, 2).to(dtype))


# -- Mamba2 mixer forward ------------------------------------------------------------------------------
def _mamba2_forward(self: MixerLike, hidden_states: torch.Tensor, cache: Any = None,
                    attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
    """`Mamba2Mixer.forward` of transformers with the scan taken from the chosen backend."""
    lib = _lib(2)
    backend = _device_backend(self, hidden_states.device)
    kernels = backend == "cuda"
    if not kernels and (kwargs.get("seq_idx") is not None or kwargs.get("cu_seqlens") is not None):
        # the torch scans would silently mix packed sequences into one
        raise ValueError(f"packed sequences (seq_idx / cu_seqlens) need the 'cuda' backend (mamba-ssm); "
                         f"backend '{backend}' cannot keep them apart. Pad the sequences instead.")
    batch_size, seq_len, _ = hidden_states.shape
    dtype = hidden_states.dtype
    if cache is not None:
        conv_state = cache.get_conv_state(self.layer_idx, state_idx=0)
        recurrent_state = cache.get_recurrent_state(self.layer_idx, state_idx=0)
    else:
        conv_state, recurrent_state = None, None

    hidden_states = lib.apply_mask_to_padding_states(hidden_states, attention_mask)
    projected_states = self.in_proj(hidden_states)
    A = -torch.exp(self.A_log.float())
    gate, hidden_states_B_C, dt = projected_states.split(
        [self.intermediate_size, self.conv_dim, self.num_heads], dim=-1)

    hidden_states_B_C = hidden_states_B_C.transpose(1, 2)
    hidden_states_B_C = _conv(self, 2, hidden_states_B_C, conv_state, cache, seq_len, kernels, kwargs)

    hidden_states_B_C = lib.apply_mask_to_padding_states(hidden_states_B_C.transpose(1, 2), attention_mask)
    groups_state = self.n_groups * self.ssm_state_size
    hidden_states, B, C = torch.split(hidden_states_B_C, [self.intermediate_size, groups_state, groups_state],
                                      dim=-1)

    if recurrent_state is not None and seq_len == 1:
        hs = hidden_states.view(batch_size, self.num_heads, self.head_dim)
        dt1 = dt.transpose(1, 2).expand(-1, -1, self.head_dim)
        A1 = A[:, None, None].expand(-1, self.head_dim, self.ssm_state_size)
        scan_output = _lib_fn(2, "mamba2_selective_state_update", kernels)(
            recurrent_state, hs, dt1, A1, B.view(batch_size, self.n_groups, self.ssm_state_size),
            C.view(batch_size, self.n_groups, self.ssm_state_size), self.D[:, None].expand(-1, self.head_dim),
            z=None, dt_bias=self.dt_bias[:, None].expand(-1, self.head_dim), dt_softplus=True, **kwargs)
        scan_output = scan_output.view(batch_size, 1, -1)
    else:
        x = hidden_states.view(batch_size, seq_len, self.num_heads, self.head_dim)
        Bv = B.view(batch_size, seq_len, self.n_groups, self.ssm_state_size)
        Cv = C.view(batch_size, seq_len, self.n_groups, self.ssm_state_size)
        want_states = _hooked(self.ssm_states)
        states = None
        common = dict(D=self.D, dt_bias=self.dt_bias, dt_softplus=True, initial_states=recurrent_state,
                      dt_limit=self.time_step_limit)
        if backend == "cpu-scan":
            result = _scan.ssd_scan(x, dt, A, Bv, Cv, self._probekit_chunk_size, **common,
                                    return_final_states=True, return_states=want_states)
            scan_output, final_state = result[0], result[1]
            if want_states:
                states = result[2]
        elif backend == "cuda":
            scan_output, final_state = _mamba_ssm().mamba_chunk_scan_combined(
                x, dt, A, Bv, Cv, self.chunk_size, z=None, return_final_states=True, **common)
        else:
            scan_output, final_state = _torch_path(lib.mamba2_chunk_scan)(
                x, dt, A, Bv, Cv, chunk_size=self.chunk_size, z=None, return_final_states=True, **common)
        if want_states and states is None:
            _, states = _scan.ssd_scan(x, dt, A, Bv, Cv, self._probekit_chunk_size, **common,
                                       return_states=True)
        if cache is not None:
            cache.update_recurrent_state(final_state, layer_idx=self.layer_idx)
        self.ssm_state(final_state)
        if want_states:
            self.ssm_states(states)
        scan_output = scan_output.reshape(batch_size, seq_len, -1)

    scan_output = self.norm(scan_output, gate)
    return self.out_proj(scan_output.to(dtype))


# -- installing ------------------------------------------------------------------------------------
class StatePoint(nn.Identity):
    """An identity hook point: the mixer calls it with an SSM state so forward hooks can read it."""


def _mixers(model: nn.Module) -> list[tuple[MixerLike, int]]:
    m1, m2 = _mixer_classes()
    found: list[tuple[MixerLike, int]] = []
    for module in model.modules():
        if isinstance(module, m2):
            found.append((module, 2))
        elif isinstance(module, m1):
            found.append((module, 1))
    return found


def set_backend(model: nn.Module, backend: str, *, use_conv: bool | None = None,
                chunk_size: int | None = None) -> nn.Module:
    """Make every Mamba / Mamba2 mixer in `model` scan with `backend`; returns `model`.

    Args:
        backend: `auto`, `cuda`, `cpu-scan` or `reference` (see the module docstring).
        use_conv: `False` bypasses the depthwise conv1d (identity; the activation stays).
            `None` keeps the current choice (first call: `model.config.probekit_use_conv`, else True).
        chunk_size: chunk length of the `cpu-scan` (`None`: keep, first call: 32).
    """
    resolve_backend(backend)  # validates the name
    if backend == "cuda" and not mamba_ssm_available():
        _check_cuda(torch.device("cuda"))
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    mixers = _mixers(model)
    if not mixers:
        raise TypeError(f"{type(model).__name__} contains no transformers MambaMixer / Mamba2Mixer; "
                        "set_backend works on MambaModel, Mamba2Model and their ForCausalLM models")
    config = getattr(model, "config", None)
    saved_use_conv = bool(getattr(config, "probekit_use_conv", True))
    for mixer, version in mixers:
        if use_conv is not None:
            mixer._probekit_use_conv = bool(use_conv)
        elif not hasattr(mixer, "_probekit_use_conv"):
            mixer._probekit_use_conv = saved_use_conv
        if chunk_size is not None:
            mixer._probekit_chunk_size = int(chunk_size)
        elif not hasattr(mixer, "_probekit_chunk_size"):
            mixer._probekit_chunk_size = DEFAULT_CHUNK
        mixer._probekit_backend = backend
        if "ssm_state" not in mixer._modules:
            mixer.ssm_state = StatePoint()
            mixer.ssm_states = StatePoint()
        mixer.forward = types.MethodType(_mamba_forward if version == 1 else _mamba2_forward, mixer)
    if config is not None:
        config.probekit_use_conv = all(m._probekit_use_conv for m, _ in mixers)
    return model


def get_backend(model: nn.Module) -> str | None:
    """The backend installed on `model`'s mixers (`None` if `set_backend` was never called)."""
    names = {getattr(m, "_probekit_backend", None) for m, _ in _mixers(model)}
    if len(names) > 1:
        raise ValueError(f"the mixers of this model use different backends: {sorted(map(str, names))}")
    return names.pop() if names else None


def _make_config(config: Any, arch: str | None) -> Any:
    from transformers import Mamba2Config, MambaConfig, PretrainedConfig

    if isinstance(config, PretrainedConfig):
        return config
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict of the library's config fields or a config object, "
                        f"got {type(config).__name__}")
    fields = dict(config)
    model_type = fields.pop("model_type", None)
    arch = arch or model_type or "mamba"
    if arch not in ("mamba", "mamba2"):
        raise ValueError(f"unknown Mamba architecture '{arch}'; use 'mamba' or 'mamba2'")
    cls = MambaConfig if arch == "mamba" else Mamba2Config
    known = set(inspect.signature(cls.__init__).parameters) | set(cls().to_dict())
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; see the transformers documentation "
                         f"of {cls.__name__} for its fields")
    return cls(**fields)


def build_mamba(config: dict[str, Any] | Any, *, backend: str = "auto", use_conv: bool = True,
                chunk_size: int = DEFAULT_CHUNK, arch: str | None = None, head: bool = False) -> nn.Module:
    """A freshly initialised `transformers` Mamba model with a scan backend installed.

    Args:
        config: the library's config fields as a dict (e.g. ``{"hidden_size": 16,
            "num_hidden_layers": 8, "state_size": 8, "expand": 2, "vocab_size": 1}``;
            `"model_type": "mamba2"` selects Mamba2), or a `MambaConfig` / `Mamba2Config`.
        backend: see `set_backend`; `auto` is `cpu-scan` unless the model runs on a GPU
            with mamba-ssm installed.
        use_conv: `False` removes the depthwise conv1d from the computation (the study's model).
        chunk_size: chunk length of the `cpu-scan` backend.
        arch: `"mamba"` or `"mamba2"` (default: the dict's `model_type`, else `"mamba"`).
        head: return `MambaForCausalLM` / `Mamba2ForCausalLM` (with `lm_head`) instead of the
            bare `MambaModel` / `Mamba2Model`.

    Returns:
        The real `transformers` model (e.g. `MambaModel`); call it with `input_ids` or
        `inputs_embeds` as usual.
    """
    from transformers import Mamba2ForCausalLM, Mamba2Model, MambaForCausalLM, MambaModel

    cfg = _make_config(config, arch)
    cls: type[nn.Module]
    if cfg.model_type == "mamba2":
        cls = Mamba2ForCausalLM if head else Mamba2Model
    else:
        cls = MambaForCausalLM if head else MambaModel
    model = cls(cfg)
    return set_backend(model, backend, use_conv=use_conv, chunk_size=chunk_size)
