"""Options of the `mamba` model type (validated before anything heavy is imported)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from probekit import Options


class MambaOptions(Options):
    """`model: {type: mamba, ...}`: a Hugging Face Mamba / Mamba2 model and its scan backend."""

    name: str | None = Field(None, description="Hub id (e.g. state-spaces/mamba-130m-hf; needs the network "
                                               "or the local HF cache) or a local directory written by "
                                               "save_pretrained.")
    config: dict[str, Any] | None = Field(
        None, description="The library's config fields, e.g. {hidden_size: 16, num_hidden_layers: 8, "
                          "state_size: 8, expand: 2}; model_type: mamba2 selects Mamba2. Random weights.")
    arch: Literal["mamba", "mamba2"] | None = Field(
        None, description="Architecture for `config:` (default: its model_type, else mamba).")
    head: bool | None = Field(None, description="Use the ForCausalLM model (adds layer `head`, the logits). "
                                                "Default: true for `name:` checkpoints that have an lm_head, "
                                                "false for `config:`.")
    pretrained: bool = Field(True, description="With `name:`: load its weights (false: its config only).")
    backend: Literal["auto", "cuda", "cpu-scan", "reference"] = Field(
        "auto", description="Selective-scan backend: cuda = mamba-ssm kernels (GPU), cpu-scan = probekit's "
                            "chunked scan, reference = transformers' slow path, auto = the fastest one.")
    chunk_size: int = Field(32, ge=1, description="Chunk length of the cpu-scan backend.")
    use_conv: bool | None = Field(
        None, description="false bypasses the mixers' depthwise conv1d (the study's 'conv1d removed'); "
                          "default: as saved, else true.")
    seq_len: int = Field(16, ge=1, description="Length of the example sequences used to list layer shapes.")
    revision: str | None = Field(None, description="Hub revision of `name:`.")
    trust_remote_code: bool = Field(False, description="Passed to from_pretrained; keep it false.")

    @model_validator(mode="after")
    def _one_source(self) -> MambaOptions:
        if (self.name is None) == (self.config is None):
            raise ValueError("give exactly one of `name:` (hub id or local directory) and `config:` "
                             "(a dict of MambaConfig / Mamba2Config fields)")
        if self.name is not None and self.arch is not None:
            raise ValueError("`arch:` applies to `config:` only; a `name:` checkpoint names its architecture")
        return self
