"""The `mamba` model adapter: Hugging Face Mamba / Mamba2 with canonical layer names.

Layers (`N` = number of blocks):

========================  ======  ==============================================================
`embed`                 tokens  input of the first block: the embeddings (or `inputs_embeds`)
`layer.i`               tokens  output of block `i` (the residual stream), `i = 0 .. N-1`
`layer.i.ssm_state`     state   the mixer's recurrent SSM state after the whole sequence:
                                  Mamba (d_inner, state); Mamba2 (heads, head_dim, state)
`layer.i.ssm_states`    state   the SSM state after every position: (L, ...) as above
`norm`                  tokens  the final RMS norm (`norm_f`): the model's last hidden state
`head`                  logits  `lm_head` logits (ForCausalLM models only)
========================  ======  ==============================================================

`transformers`' `output_hidden_states` holds `layer.0` .. `layer.N-1` then `norm`
(this version does not put the embeddings first). Inputs are model-ready token ids (int,
(batch, L)), embeddings (float, (batch, L, hidden)) or a dict of keyword arguments; images
are not this model's natural input, so `preprocess` / `postprocess` are the identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from probekit import CapturePoint, ModelAdapter, SpecError
from probekit_mamba._backends import BACKENDS, build_mamba, get_backend, set_backend

if TYPE_CHECKING:
    from transformers import Mamba2Model, MambaModel


class MambaAdapter(ModelAdapter):
    """A `transformers` Mamba / Mamba2 model (`.model`) with a selectable scan backend.

    Options are those of `probekit_mamba.options.MambaOptions`. From Python, `model=`
    wraps an existing Mamba / Mamba2 model instead (e.g. one from `probekit_mamba.build_mamba`).
    """

    type_name = "mamba"

    def __init__(self, name: str | None = None, config: dict[str, Any] | None = None, arch: str | None = None,
                 head: bool | None = None, pretrained: bool = True, backend: str = "auto",
                 chunk_size: int = 32, use_conv: bool | None = None, seq_len: int = 16,
                 revision: str | None = None, trust_remote_code: bool = False,
                 model: nn.Module | None = None):
        if backend not in BACKENDS:
            raise SpecError(f"unknown backend '{backend}'", path="model.backend",
                            fix=f"Use one of {', '.join(BACKENDS)}.")
        if sum(x is not None for x in (name, config, model)) != 1:
            raise SpecError("give exactly one of `name:` and `config:`", path="model",
                            fix="name: a hub id or a local save_pretrained directory; config: a dict of "
                                "MambaConfig / Mamba2Config fields.")
        if model is None and name is not None:
            model = self._load(name, head, pretrained, revision, trust_remote_code)
        elif model is None and config is not None:
            model = self._from_config(config, arch, head)
        assert model is not None  # exactly one of name, config and model (checked above)
        self.model = set_backend(model, backend, use_conv=use_conv, chunk_size=chunk_size)
        self.name = name
        self.backend = backend
        self.seq_len = int(seq_len)
        self.input_shape = (self.seq_len,)  # type: ignore[assignment]  # a sequence, not an image

    # -- construction ------------------------------------------------------------------------
    @staticmethod
    def _from_config(config: dict[str, Any], arch: str | None, head: bool | None) -> nn.Module:
        try:
            return build_mamba(config, arch=arch, head=bool(head), backend="reference")
        except (TypeError, ValueError) as exc:
            raise SpecError(str(exc), path="model.config", fix="Give the library's config fields.") from None

    @staticmethod
    def _load(name: str, head: bool | None, pretrained: bool, revision: str | None,
              trust_remote_code: bool) -> nn.Module:
        import transformers
        from transformers import AutoConfig

        local = Path(name).expanduser()
        source = str(local) if local.exists() else name
        kw = {"revision": revision, "trust_remote_code": trust_remote_code}
        try:
            cfg = AutoConfig.from_pretrained(source, **kw)
        except OSError as exc:
            hint = ("It is not a local directory, and the model hub cannot be reached (offline, or "
                    "HF_HUB_OFFLINE=1) or has no such repository. Download it once where there is a "
                    "network (it is cached), or give a local directory written by save_pretrained, "
                    "or `config:` for random weights.")
            detail = " ".join(str(exc).split()).rstrip(".")
            raise SpecError(f"cannot load Mamba model '{name}' ({type(exc).__name__}: {detail})",
                            path="model.name", fix=hint) from None
        if cfg.model_type not in ("mamba", "mamba2"):
            raise SpecError(f"'{name}' is a '{cfg.model_type}' model, not mamba or mamba2", path="model.name",
                            fix="Use the `vit`, `detr` or `module` model types for other models.")
        if head is None:  # hub checkpoints are ForCausalLM; a saved bare model has no lm_head weights
            head = any(a.endswith("ForCausalLM") for a in getattr(cfg, "architectures", None) or [])
        prefix = "Mamba" if cfg.model_type == "mamba" else "Mamba2"
        cls = getattr(transformers, f"{prefix}ForCausalLM" if head else f"{prefix}Model")
        if not pretrained:
            return cls(cfg)
        return cls.from_pretrained(source, config=cfg, **kw)

    # -- layers ------------------------------------------------------------------------------
    @property
    def backbone(self) -> MambaModel | Mamba2Model:
        """The `MambaModel` / `Mamba2Model` (the model itself, or its `backbone`)."""
        model: Any = self.model  # a MambaModel / Mamba2Model, or a *ForCausalLM that holds one as `backbone`
        return getattr(model, "backbone", model)

    def _prefix(self) -> str:
        return "backbone." if hasattr(self.model, "backbone") else ""

    def capture_points(self) -> dict[str, CapturePoint]:
        pre = self._prefix()
        points = {"embed": CapturePoint(f"{pre}layers.0", input=True)}
        for i in range(len(self.backbone.layers)):
            points[f"layer.{i}"] = CapturePoint(f"{pre}layers.{i}")
            points[f"layer.{i}.ssm_state"] = CapturePoint(f"{pre}layers.{i}.mixer.ssm_state")
            points[f"layer.{i}.ssm_states"] = CapturePoint(f"{pre}layers.{i}.mixer.ssm_states")
        points["norm"] = CapturePoint(f"{pre}norm_f")
        if hasattr(self.model, "lm_head"):
            points["head"] = CapturePoint("lm_head")
        return points

    def layer_kinds(self) -> dict[str, str]:
        kinds = {name: "state" for name in self.capture_points()
                 if name.endswith(("ssm_state", "ssm_states"))}
        kinds["head"] = "logits"
        return kinds

    def layer_meta(self, name: str, shape: tuple[int, ...]) -> dict[str, Any]:
        if name.endswith("ssm_states"):
            return {"per_position": True, "seq_dim": 0}
        if name.endswith("ssm_state"):
            return {"per_position": False}
        return {}

    # -- inputs --------------------------------------------------------------------------------
    def forward(self, inputs: Any) -> Any:
        """Call the model: int tensors are `input_ids`, float tensors `inputs_embeds`, dicts keyword args.

        `use_cache=False` unless the inputs say otherwise (a probe does not generate).
        """
        if isinstance(inputs, Mapping):
            kwargs = dict(inputs)
        elif isinstance(inputs, torch.Tensor):
            key = "inputs_embeds" if inputs.is_floating_point() else "input_ids"
            kwargs = {key: inputs}
        else:
            raise TypeError(f"mamba adapter: inputs must be token ids, embeddings or a dict of keyword "
                            f"arguments, got {type(inputs).__name__}")
        kwargs.setdefault("use_cache", False)
        return self.model(**kwargs)

    def example_inputs(self, batch_size: int = 2) -> torch.Tensor:
        """Token ids (batch, seq_len), deterministic."""
        vocab = int(self.backbone.config.vocab_size)
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, max(vocab, 1), (batch_size, self.seq_len), generator=gen)
        return ids.to(self.device)

    def preprocess(self, inputs: torch.Tensor) -> torch.Tensor:
        """Identity: the inputs are token ids or embeddings, already model-ready."""
        return inputs

    def postprocess(self, inputs: torch.Tensor) -> torch.Tensor:
        """Identity (see `preprocess`)."""
        return inputs

    def describe_preprocessing(self) -> dict[str, Any]:
        mixer = self.backbone.get_submodule("layers.0.mixer")
        return {"inputs": "token ids or embeddings (identity preprocess)", "seq_len": self.seq_len,
                "use_conv": mixer._probekit_use_conv}

    def set_backend(self, backend: str) -> MambaAdapter:
        """Switch the scan backend of the wrapped model (see `probekit_mamba.set_backend`)."""
        set_backend(self.model, backend)
        self.backend = get_backend(self.model) or backend
        return self
