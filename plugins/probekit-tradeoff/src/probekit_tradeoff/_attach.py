"""`encoder: {model, layer, trainable}`: a layer of another model as the tradeoff encoder's input.

The model is any registered adapter (`module`, `vit`, ...). Its layer's states go into the
family's encoder; the decoder still reconstructs the input image's pixels, so the tradeoff can be
measured at every depth of a pretrained network. Frozen (`trainable: false`), the states are
computed once per image into the core's on-disk feature cache and reused by every sweep point and
epoch. Trainable, the model's weights receive the encoder's lambda-weighted gradient, and every
sweep point starts again from the model's original weights.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from probekit import FeatureSet, RunContext, SpecError

if TYPE_CHECKING:
    from probekit_tradeoff._models import TradeoffModel


class Attached:
    """A model adapter and one of its layers, feeding the tradeoff's encoder."""

    def __init__(self, adapter: Any, layer: str, trainable: bool, device: torch.device):
        self.adapter = adapter
        self.layer = layer
        self.trainable = trainable
        self.device = device
        try:
            self.in_shape = tuple(adapter.layer(layer).shape)
        except KeyError as exc:
            raise SpecError(
                str(exc.args[0]) if exc.args else str(exc),
                path="probe.encoder.layer",
                fix="Pick one of the layers listed (`probekit` shows them in a run's log).",
            ) from None
        self.initial_state = copy.deepcopy(adapter.model.state_dict()) if trainable else None
        for p in adapter.model.parameters():
            p.requires_grad_(trainable)
        adapter.model.eval()
        self.sets: dict[str, FeatureSet] = {}

    @classmethod
    def build(cls, run: RunContext, spec: dict[str, Any], train: Any, test: Any) -> Attached:
        """Build the adapter of `spec["model"]` (already validated by its plugin's options model)."""
        from probekit import get_plugin_manager

        options = dict(spec["model"])
        type_name = str(options.pop("type"))
        entry = get_plugin_manager().get("models", type_name, path="probe.encoder.model.type")
        adapter = entry.load()(**options)
        if getattr(adapter, "input_shape", None) is None:
            adapter.input_shape = tuple(train.images.shape[1:])
        adapter.to(run.device)
        self = cls(adapter, spec["layer"], bool(spec.get("trainable", False)), run.device)
        run.log(
            f"tradeoff: encoder input is layer '{self.layer}' {self.in_shape} of a {type_name} model "
            f"({'trainable' if self.trainable else 'frozen'})"
        )
        if not self.trainable:  # frozen: the layer's states come from the core's feature cache
            for name, split in (("train", train), ("test", test)):
                self.sets[name] = run.features([self.layer], name, model=adapter)
                if len(self.sets[name]) != len(split.labels):
                    raise RuntimeError(f"cached {name} features ({len(self.sets[name])}) do not match the data "
                                       f"({len(split.labels)})")
        return self

    def states(self, images: torch.Tensor) -> torch.Tensor:
        """The layer's states for images in [0, 1] (with autograd when trainable)."""
        _, states = self.adapter.capture(
            self.adapter.preprocess(images), [self.layer], detach=not self.trainable
        )
        return states[self.layer]

    def inputs(
        self, split: Any, name: str, model: TradeoffModel
    ) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor] | None]:
        if self.trainable:
            return (lambda idx: split.images[idx]), (lambda images: model.encoder(self.states(images)))
        features = self.sets[name]
        return (lambda idx: features.batch(idx.cpu(), [self.layer])[self.layer].to(self.device)), None

    def reset(self) -> None:
        """Back to the original weights (each sweep point fine-tunes from the same start)."""
        if self.initial_state is not None:
            self.adapter.model.load_state_dict(self.initial_state)

    def eval(self) -> None:
        self.adapter.model.eval()
