"""`probekit run --dry-run`: what a spec would do, without training anything."""

from __future__ import annotations

from typing import Any

from probekit._spec import LoadedSpec


def dry_run(loaded: LoadedSpec) -> str:
    from pathlib import Path

    from probekit._adapter import check_probe_layers
    from probekit._data import build_data, num_examples
    from probekit._errors import display_path
    from probekit._registry import create_probe
    from probekit._runner import Run, default_run_dir, resolve_device

    spec = loaded.spec
    lines = [f"spec: {display_path(loaded.path) if loaded.path else '<dict>'} (name '{spec.name}', seed {spec.seed}, "
             f"device {resolve_device(spec.device)})"]
    run = Run(loaded, Path(default_run_dir(spec.name)), quiet=True)
    if spec.data is not None:
        run.data = build_data(run)
        info = run.data.info
        lines.append(f"data: {spec.data.type}: {num_examples(run.data.train)} train / "
                     f"{num_examples(run.data.test)} test, "
                     f"images {tuple(info.image_shape)}, {info.num_classes} classes")
    n_items = num_examples(run.data.train) + num_examples(run.data.test) if run.data is not None else 0
    if spec.model is not None:
        from probekit._registry import create_model

        adapter = create_model(spec.model.type, **run.options["model"])
        if getattr(adapter, "input_shape", None) is None and run.data is not None:
            adapter.input_shape = tuple(run.data.info.image_shape)
        n_params = sum(p.numel() for p in adapter.model.parameters())
        lines.append(f"model: {spec.model.type} ({type(adapter.model).__name__}, {n_params:,} parameters)"
                     + (f", trained first for {spec.model.train.epochs} epochs" if spec.model.train else ""))
        check_probe_layers(adapter, spec.probe.type, run.options["probe"])
        run.model = adapter
        layers = adapter.layers()
        probe_layers: Any = run.options["probe"].get("layers")
        wanted = ([x.name for x in layers] if probe_layers in (None, "all")  # friendly names -> module paths
                  else [adapter.layer(n).name for n in ([probe_layers] if isinstance(probe_layers, str)
                                                        else probe_layers)])
        total = 0
        lines.append("layers probed:")
        for layer in layers:
            if layer.name in wanted:
                size = 4 * n_items
                for s in layer.shape:
                    size *= s
                total += size
                name = layer.name + (f" ({layer.meta['alias']})" if layer.meta.get("alias") else "")
                lines.append(f"  {name:<24} {layer.kind:<7} {tuple(layer.shape)}  cache {size / 2**20:.1f} MiB")
        lines.append(f"estimated feature cache: {total / 2**20:.1f} MiB (float32)")
        friendly = [f"{x.meta['alias']} = {x.name}" for x in layers if x.meta.get("alias")]
        if friendly:
            lines.append("friendly layer names (usable in specs): " + ", ".join(friendly))
    probe = create_probe(spec.probe.type, **run.options["probe"])
    extra = probe.dry_run(run)
    lines.append(f"probe: {spec.probe.type} {run.options['probe']}")
    for k, v in extra.items():
        lines.append(f"  {k}: {v}")
    if spec.metrics:
        lines.append("metrics: " + ", ".join(m.type for m in spec.metric_specs()))
    return "\n".join(lines)
