"""spec.yaml: pydantic models, loading, `--set` overrides and validation of type-specific options.

The core validates the shape of a spec; each section's type-specific options
are validated by the options model its plugin registered. Every error becomes a
`SpecError` naming the file, the key path, what is wrong
and how to fix it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.functional_validators import AfterValidator, BeforeValidator

from probekit._errors import SpecError, did_you_mean


# -- path types for options models ---------------------------------------------------------
def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir") if info is not None else None
    value = Path(value).expanduser()
    if not value.is_absolute() and base is not None:
        value = Path(base) / value
    return value


def _existing_path(value: Path, info: ValidationInfo) -> Path:
    value = _resolve_path(value, info)
    if not value.exists():
        raise ValueError(f"file not found: {value} (paths in a spec are relative to the spec's folder)")
    return value


def _batch_size(value: Any) -> Any:
    if value == "auto":
        return value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"must be a positive integer or 'auto', got {value!r}")
    return value


SpecPath = Annotated[Path, AfterValidator(_resolve_path)]
"""A path in a spec, resolved relative to the spec file's folder."""
ExistingPath = Annotated[Path, AfterValidator(_existing_path)]
"""Like `SpecPath`, and the file or folder must exist."""
BatchSize = Annotated[Annotated[int, Field(ge=1)] | Literal["auto"], BeforeValidator(_batch_size)]
"""A training batch size: a positive number, or `"auto"` for the largest that fits in memory.

Found once per run and kept for `--resume` (see `probekit.resolve_batch_size`).
"""
BATCH_SIZE_HELP = "Training batch size, or 'auto': the largest that fits in memory (kept for --resume)."
"""Description of `BatchSize` options in the schema."""


class Options(BaseModel):
    """Base class of plugins' options models: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


# -- the spec ---------------------------------------------------------------------------
class _Section(BaseModel):
    """A spec section: a `type` plus options validated by the plugin that owns the type."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(description="Registered type name (see `probekit list`).")

    def options(self) -> dict[str, Any]:
        """The type-specific options (the keys not defined by the core)."""
        return dict(self.model_extra or {})


class TrainSpec(BaseModel):
    """Fit the model as a classifier before probing (`model.train`)."""

    model_config = ConfigDict(extra="forbid")
    data: dict[str, Any] | None = Field(None, description="A data section; default: the run's `data`.")
    epochs: int = Field(5, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: BatchSize = Field(64, description=BATCH_SIZE_HELP)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="Learning rate over the epochs: constant, or cosine (from lr down to 0 at the "
                                "end, stepped once per epoch).")
    grad_clip: float | None = Field(None, gt=0, description="Clip the gradients' global L2 norm to this before "
                                                            "every step (default: no clipping).")
    keep: Literal["last", "best"] = Field(
        "last", description="Which weights the probe reads: the last epoch's, or the epoch's with the lowest "
                            "loss on a validation split of val_fraction of the training images (which are then "
                            "not trained on). Both are checkpointed.")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Share of the training images held out for "
                                                             "validation when keep is best.")


class ModelSpec(_Section):
    """`model:`: the model adapter type and its options."""

    train: TrainSpec | None = Field(None, description="Train the model as a classifier before probing.")


class DataSpec(_Section):
    """`data:`: the dataset source, its options and how much of it to use."""

    limit: int | None = Field(None, ge=2, description="Use at most this many training examples (at least 2).")
    test_limit: int | None = Field(None, ge=1, description="Use at most this many test examples.")
    batch_size: int = Field(64, ge=1, description="Batch size for feature extraction and evaluation.")


class ProbeSpec(_Section):
    """`probe:`: the probe type and its options."""


class MetricSpec(_Section):
    """An entry of `metrics:` given with options (`{type: lpips, net: alex}`)."""


class Spec(BaseModel):
    """A whole spec.yaml."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="Run name; the default run directory is runs/<name>.")
    seed: int = Field(0, ge=0, description="Seed of every random choice; with `seeds`, the seed of the data "
                                             "split (the same for every seed run).")
    seeds: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, min_length=1, description="Run the probe once per seed (model training, probe initialisation, "
                                        "data order) in RUN_DIR/seeds/<seed>/, then combine the results with "
                                        "mean, std and 95% intervals (e.g. [0, 1, 2]).")
    seed_processes: int = Field(1, ge=1, le=256, description="With `seeds`: how many seeds run at once, each in a "
                                "process of its own on this machine (on CPUs set `threads` so that seed_processes x "
                                "threads <= cores). Every seed's numbers are the same as when they run one by one.")
    device: str = Field("auto", description="auto (cuda when available, else cpu), cpu, cuda, cuda:<i> (GPU i) or mps "
                                            "(Apple GPU).")
    model: ModelSpec | None = None
    data: DataSpec | None = None
    probe: ProbeSpec
    metrics: list[str | MetricSpec] = Field(default_factory=list)
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Training precision: fp32, or mixed precision with bf16 / fp16 autocast.")
    cache_dtype: Literal["float32", "float16"] = Field(
        "float32", description="Storage type of the feature cache (float16 halves its size).")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's own choice).")
    cache_dir: str | None = Field(None, description="Feature/model cache folder; default $PROBEKIT_CACHE "
                                                    "or ~/.cache/probekit.")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v):
            raise ValueError("must be auto, cpu, cuda, cuda:<index> or mps")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"seeds must differ from each other, got {v}")
        return v

    def metric_specs(self) -> list[MetricSpec]:
        return [MetricSpec(type=m) if isinstance(m, str) else m for m in self.metrics]


class LoadedSpec:
    """A validated spec, where it came from, and the validated options of each section."""

    def __init__(self, spec: Spec, raw: dict[str, Any], path: Path | None, options: dict[str, dict[str, Any]]):
        self.spec = spec
        self.raw = raw
        self.path = path
        self.options = options  # "model" / "data" / "probe" / "metrics.<i>" -> validated options

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path is not None else Path.cwd()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.spec, name)


# -- loading ---------------------------------------------------------------------------
#: At most this many nodes after expanding YAML aliases (a 1 KB "billion laughs" spec expands to
#: billions; a real spec has a few hundred).
YAML_NODE_BUDGET = 10_000
#: Largest spec file read.
MAX_SPEC_BYTES = 1 << 20
#: Integers in a spec stay within a signed 64-bit range (torch, numpy and the OS take no larger ones).
MAX_INT = 2**63 - 1


def safe_yaml(text: str, *, what: str = "the spec") -> Any:
    """`yaml.safe_load` of `text`, refusing aliases that expand past `YAML_NODE_BUDGET` nodes (and
    recursive ones) before anything is built."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, what)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node, what: str) -> None:
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise SpecError(f"{what} has a recursive YAML alias", fix="Write the value out instead of `*alias`.")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                total += size(child)
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                total += size(k) + size(v)
        active.discard(key)
        if total > YAML_NODE_BUDGET:
            raise SpecError(f"{what} expands to more than {YAML_NODE_BUDGET:,} values through YAML aliases "
                            f"(`&anchor` / `*alias`)", fix="Write the spec out without nested aliases.")
        sizes[key] = total
        return total

    size(root)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping of a spec file; every problem with the file is a `SpecError` naming it."""
    path = Path(path)
    if not path.exists():
        raise SpecError("spec file not found", file=str(path), fix="Check the path.")
    if path.is_dir():
        raise SpecError("this is a directory, not a spec file", file=str(path),
                        fix="Give the path of a spec.yaml file.")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"cannot read the spec ({exc.strerror or exc})", file=str(path),
                        fix="Check the path and its permissions.") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"the spec is larger than {MAX_SPEC_BYTES // 1024} KiB", file=str(path),
                        fix="Give a spec.yaml (a few lines of YAML), not a data file.")
    try:
        text = raw.decode("utf-8")
        if "\x00" in text:
            raise UnicodeDecodeError("utf-8", raw, text.index("\x00"), text.index("\x00") + 1, "NUL byte")
    except UnicodeDecodeError:
        raise SpecError("not a text file (it is not UTF-8 text)", file=str(path),
                        fix="Give the path of a spec.yaml file.") from None
    try:
        data = safe_yaml(text)
    except SpecError as exc:
        raise exc.with_file(str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"invalid YAML{' at ' + where if where else ''}: {problem}", file=str(path),
                        fix="Fix the YAML syntax (indentation, colons, quotes).") from None
    if data is None:
        raise SpecError("the file is empty (it holds no keys)", file=str(path),
                        fix="Write a spec into it (`probe: {type: ...}` at least), or start from an example: "
                            "probekit examples copy quickstart.")
    if not isinstance(data, dict):
        raise SpecError(f"a spec must be a mapping of keys, got {type(data).__name__}", file=str(path),
                        fix="Start with `probe: {type: ...}`; see `probekit schema`.")
    return data


def check_numbers(data: Any, path: str = "") -> None:
    """Refuse integers beyond 64 bits and floats that are not finite, anywhere in a spec (a
    `SpecError` with the key path)."""
    import math

    if isinstance(data, dict):
        for k, v in data.items():
            check_numbers(v, f"{path}.{k}" if path else str(k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            check_numbers(v, f"{path}[{i}]" if path else f"[{i}]")
    elif isinstance(data, bool):
        return
    elif isinstance(data, int) and abs(data) > MAX_INT:
        shown = str(data) if len(str(data)) < 30 else f"a number of {len(str(abs(data)))} digits"
        raise SpecError(f"{shown} is too large (at most {MAX_INT})", path=path,
                        fix="Give a value in the option's range; `probekit schema` describes every key.")
    elif isinstance(data, float) and not math.isfinite(data):
        raise SpecError(f"{data} is not a finite number", path=path, fix="Give a finite number.")


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply `a.b=c` overrides (values parsed as YAML) to a copy of `data`."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = re.sub(r"\[(-?\d+)\]", r".\1", key.strip())  # probe.layers[1] is probe.layers.1
        if not sep or not key or any(not part for part in key.split(".")):
            raise SpecError(f"bad --set '{item}'", path="--set",
                            fix="Write --set KEY=VALUE with a dotted key, e.g. --set probe.epochs=3.")
        try:
            value = safe_yaml(text, what=f"--set {key}")
        except SpecError as exc:
            raise SpecError(exc.message, path=key, fix=exc.fix) from None
        except yaml.YAMLError:
            value = text
        parts = key.split(".")
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            here = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                node = node[_index(node, part, here, item)]
                continue
            if not isinstance(node, dict):
                raise SpecError(f"bad --set '{item}': '{'.'.join(parts[:depth])}' is a value, not a section",
                                path=here, fix="Set the value itself, or check the key path.")
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            idx = _index(node, last, key, item)
            node[idx] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise SpecError(f"bad --set '{item}': '{'.'.join(parts[:-1])}' is a value, not a section",
                            path=key, fix="Set the value itself, or check the key path.")
    return data


def _index(node: list[Any], part: str, here: str, item: str) -> int:
    try:
        idx = int(part)
        node[idx]
        return idx
    except (ValueError, IndexError):
        raise SpecError(f"bad --set '{item}': '{part}' is not an index of a list of {len(node)} items",
                        path=here, fix=f"Use an index from 0 to {len(node) - 1}.") from None


def _loc(loc: Iterable[Any]) -> str:
    """A key path as the user reads it: `probe.layers[1].name` (list items by index in brackets)."""
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _model_at(model: Any, loc: Iterable[Any]) -> Any:
    """The pydantic model that validates the mapping at key path `loc` below `model` (through
    nested sections, lists and optional values), or None."""
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):  # a list item: its model is the list's item model, found already
            continue
        field = model.model_fields.get(part)
        model = _inner_model(field.annotation) if field is not None else None
    return model


def _inner_model(annotation: Any) -> Any:
    """The first pydantic model inside a type (`X`, `X | None`, `list[X]`, `Annotated[X, ...]`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def spec_error_from_validation(exc: ValidationError, prefix: str = "", model: Any = None,
                               also: Iterable[str] = ()) -> SpecError:
    """The first error of a pydantic ValidationError, as a SpecError with key path and fix.

    An unknown key gets the valid keys of its mapping (from `model`, through nested sections) and a
    "did you mean"; `also`: keys valid beside `model`'s at its top level (a section's core keys).
    """
    # An unknown key is usually the cause of a "missing" one (a typo), so report it first.
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    err = errors[0]
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p in ("str", "MetricSpec"))]
    path = ".".join(filter(None, [prefix, _loc(loc)]))
    kind = err["type"]
    more = f" ({len(errors) - 1} more problem{'s' if len(errors) > 2 else ''} after this one)" \
        if len(errors) > 1 else ""
    if kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        valid = sorted({*parent.model_fields, *(also if len(loc) == 1 else ())}) if parent is not None else []
        name = str(loc[-1]) if loc else ""
        fix = "Remove it or check its spelling."
        if valid:
            fix += did_you_mean(name, valid) + f" Valid keys: {', '.join(valid)}."
        elif parent is not None:
            fix = "Remove it: this section takes no other keys."
        return SpecError(f"unknown key '{name}'{more}", path=path, fix=fix)
    if kind == "missing":
        return SpecError(f"required key is missing{more}", path=path, fix="Add it to the spec.")
    if kind == "value_error":  # a validator's own message already says what is wrong
        msg = err["msg"].removeprefix("Value error, ")
        return SpecError(f"{msg}{more}", path=path, fix="" if msg.rstrip().endswith(".") else "Fix it in the spec.")
    given = err.get("input")
    shown = repr(given) if not isinstance(given, (dict, list)) else type(given).__name__
    return SpecError(f"{err['msg']} (got {shown}){more}", path=path,
                     fix="Give a value of the expected type; `probekit schema` describes every key.")


def parse_spec(data: Mapping[str, Any], *, file: str | None = None) -> Spec:
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        raise spec_error_from_validation(exc, model=Spec).with_file(file) from None


def validate_options(kind: str, section: Any, path: str, *, base_dir: Path, file: str | None = None,
                     exclude: Iterable[str] = ()) -> dict[str, Any]:
    """Validate a section's type-specific options with the owning plugin's options model."""
    from probekit._plugins import get_plugin_manager

    try:
        entry = get_plugin_manager().get(kind, section.type, path=f"{path}.type")
    except SpecError as exc:
        raise exc.with_file(file) from None
    options = {k: v for k, v in section.options().items() if k not in set(exclude)}
    model = entry.options_model()
    if model is None:
        return options
    try:
        validated = model.model_validate(options, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise spec_error_from_validation(exc, prefix=path, model=model,
                                         also=type(section).model_fields).with_file(file) from None
    return validated.model_dump(exclude_unset=False)


def check_spec(spec: Spec, raw: dict[str, Any], *, path: Path | None = None) -> LoadedSpec:
    """Validate every section's type-specific options; return a `LoadedSpec`."""
    from probekit._plugins import get_plugin_manager

    file = str(path) if path is not None else None
    base = path.parent if path is not None else Path.cwd()
    pm = get_plugin_manager()
    options: dict[str, dict[str, Any]] = {}
    try:
        probe_entry = pm.get("probes", spec.probe.type, path="probe.type")
    except SpecError as exc:
        raise exc.with_file(file) from None
    options["probe"] = validate_options("probes", spec.probe, "probe", base_dir=base, file=file)
    needs_model = probe_entry.meta.get("needs_model", True)
    if spec.model is None and needs_model:
        raise SpecError(f"probe '{spec.probe.type}' needs a model", path="model", file=file,
                        fix="Add a `model:` section, e.g. `model: {type: module, factory: "
                            "\"probekit.testing:small_cnn\"}`.")
    if spec.model is not None:
        options["model"] = validate_options("models", spec.model, "model", base_dir=base, file=file)
    if spec.data is None:
        if probe_entry.meta.get("needs_data", True):
            raise SpecError("a `data:` section is required", path="data", file=file,
                            fix="Add e.g. `data: {type: digits}`; `probekit list datasets` shows the sources.")
    else:
        options["data"] = validate_options("datasets", spec.data, "data", base_dir=base, file=file)
        if spec.model is not None and spec.model.train is not None and spec.model.train.data is not None:
            train_data = parse_section(DataSpec, spec.model.train.data, "model.train.data", file)
            options["model.train.data"] = validate_options("datasets", train_data, "model.train.data",
                                                           base_dir=base, file=file)
    for i, metric in enumerate(spec.metric_specs()):
        options[f"metrics.{i}"] = validate_options("metrics", metric, f"metrics[{i}]", base_dir=base, file=file)
        check_metric_accepted(spec.probe.type, metric.type, f"metrics[{i}]", file=file)
    return LoadedSpec(spec, raw, path, options)


def accepted_metrics(probe_type: str) -> list[str] | None:
    """The installed metrics the spec's `metrics:` may list for a probe, or None when the probe
    declares nothing (`accepts_metrics` at registration: metric names, or kinds such as `image`
    that match every metric registered with that `kind`)."""
    from probekit._plugins import get_plugin_manager

    pm = get_plugin_manager()
    accepts = pm.get("probes", probe_type).meta.get("accepts_metrics")
    if accepts is None:
        return None
    return [name for name in pm.names("metrics")
            if name in accepts or pm.get("metrics", name).meta.get("kind") in accepts]


def check_metric_accepted(probe_type: str, metric: str, path: str, *, file: str | None = None) -> None:
    """Refuse a metric of `metrics:` that the probe does not use (a `SpecError` naming what it accepts)."""
    from probekit._plugins import get_plugin_manager

    accepted = accepted_metrics(probe_type)
    if accepted is None or metric in accepted:
        return
    computes = get_plugin_manager().get("probes", probe_type).meta.get("computes") or []
    does = f" (it computes {', '.join(computes)} itself)" if computes else ""
    if not accepted:
        raise SpecError(f"probe '{probe_type}' does not use the spec's `metrics:`, so '{metric}' would be "
                        f"ignored{does}", path=path, file=file, fix="Remove the `metrics:` list.")
    raise SpecError(f"probe '{probe_type}' does not use metric '{metric}'{does}", path=path, file=file,
                    fix=f"Remove it from `metrics:`. Metrics probe '{probe_type}' accepts: {', '.join(accepted)}.")


def parse_section(cls: type[_Section], data: Any, path: str, file: str | None) -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise spec_error_from_validation(exc, prefix=path).with_file(file) from None


def load_spec(source: str | Path | Mapping[str, Any], overrides: Iterable[str] = ()) -> LoadedSpec:
    """Read, override (`a.b=c`) and validate a spec from a file path or a dict."""
    if isinstance(source, Mapping):
        path = None
        raw = dict(source)
    else:
        path = Path(source)
        raw = read_yaml(path)
    try:
        raw = apply_overrides(raw, overrides)
    except SpecError as exc:
        raise exc.with_file(str(path) if path else None) from None
    try:
        check_numbers(raw)
    except SpecError as exc:
        raise exc.with_file(str(path) if path else None) from None
    spec = parse_spec(raw, file=str(path) if path else None)
    return check_spec(spec, raw, path=path.resolve() if path else None)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of spec.yaml, with each installed type's options."""
    from probekit._plugins import get_plugin_manager

    schema = Spec.model_json_schema()
    pm = get_plugin_manager()
    defs = schema.setdefault("$defs", {})
    for section, kind, base in (("ModelSpec", "models", {"train": {"$ref": "#/$defs/TrainSpec"}}),
                                ("DataSpec", "datasets", {k: v for k, v in defs["DataSpec"]["properties"].items()
                                                          if k != "type"}),
                                ("ProbeSpec", "probes", {}), ("MetricSpec", "metrics", {})):
        variants = []
        for name in pm.names(kind):
            entry = pm.get(kind, name)
            props: dict[str, Any] = {"type": {"const": name, "description": entry.description}}
            props.update(base)
            required = ["type"]
            model = entry.options_model()
            if model is not None:
                sub = model.model_json_schema()
                for key, value in sub.pop("$defs", {}).items():
                    defs.setdefault(key, value)
                props.update(sub.get("properties", {}))
                required += sub.get("required", [])
            variants.append({"type": "object", "title": f"{kind[:-1]} '{name}'",
                             "description": entry.description, "properties": props,
                             "required": required, "additionalProperties": False})
        if variants:
            defs[section] = {"oneOf": variants, "description": defs.get(section, {}).get("description", "")}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "probekit spec"
    return schema


__all__ = ["Spec", "LoadedSpec", "Options", "SpecPath", "ExistingPath", "load_spec", "apply_overrides",
           "json_schema", "ModelSpec", "DataSpec", "ProbeSpec", "MetricSpec", "TrainSpec"]
