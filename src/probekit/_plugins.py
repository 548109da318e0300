"""Plugin manager: discovery through entry points, and the registries they fill.

Plugins are loaded from the `probekit` entry-point group, plus the core's own
`probekit.builtin` plugins. `PROBEKIT_LOAD_PLUGINS=a,b` restricts which
external plugins load (empty value: none). A plugin that fails to import is
recorded with its error and the rest keep working.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pluggy

from probekit import hookspecs
from probekit._errors import PluginError, UnknownTypeError, did_you_mean

KINDS = ("models", "probes", "metrics", "datasets", "perturbations")
_SINGULAR = {"models": "model", "probes": "probe", "metrics": "metric", "datasets": "dataset",
             "perturbations": "perturbation"}

# Names provided by first-party plugins, so that an unknown-type error can say what to install.
FIRST_PARTY: dict[str, dict[str, str]] = {
    "models": {"vit": "probekit-vit", "detr": "probekit-detr", "mamba": "probekit-mamba"},
    "probes": {"inversion": "probekit-inversion", "tradeoff": "probekit-tradeoff",
               "length-generalization": "probekit-mamba", "robustness": "probekit-perturb"},
    "metrics": {"lpips": "probekit-perturb", "cka": "probekit-perturb", "cosine": "probekit-perturb",
                "flip_rate": "probekit-perturb", "logit_distance": "probekit-perturb",
                "infidelity": "probekit-perturb", "sensitivity": "probekit-perturb"},
    "datasets": {},
    "perturbations": {"hue-set": "probekit-perturb", "hue-rotate": "probekit-perturb",
                      "grayscale": "probekit-perturb", "noise": "probekit-perturb",
                      "occlusion": "probekit-perturb", "brightness": "probekit-perturb",
                      "saturation": "probekit-perturb"},
}

BUILTIN_PLUGINS = (
    "probekit.builtin.models",
    "probekit.builtin.probes",
    "probekit.builtin.metrics",
    "probekit.builtin.datasets",
)


def resolve(obj: Any) -> Any:
    """Import `"package.module:attr"` strings; return other objects unchanged."""
    if isinstance(obj, str):
        module, _, attr = obj.partition(":")
        target: Any = importlib.import_module(module)
        for part in filter(None, attr.split(".")):
            target = getattr(target, part)
        return target
    return obj


@dataclass
class Entry:
    """One registered type: a name, its factory, its options model and who provides it."""

    kind: str
    name: str
    factory: Any
    provider: str
    description: str = ""
    options: Any = None
    meta: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Callable[..., Any]:
        return resolve(self.factory)

    def options_model(self) -> Any:
        return resolve(self.options) if self.options is not None else None


@dataclass
class PluginInfo:
    name: str
    module: str
    version: str | None
    hooks: list[str]
    provides: dict[str, list[str]]
    builtin: bool = False
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "module": self.module, "version": self.version, "builtin": self.builtin,
                "hooks": self.hooks, "provides": self.provides, "error": self.error}


class PluginManager:
    """Holds the pluggy manager and the registries of every kind."""

    def __init__(self, *, load_entry_points: bool = True):
        self.pm = pluggy.PluginManager("probekit")
        self.pm.add_hookspecs(hookspecs)
        self._failed: list[PluginInfo] = []
        self._dist: dict[str, tuple[str, str | None]] = {}  # plugin name -> (distribution, version)
        self._registries: dict[str, dict[str, Entry]] | None = None
        # plugins whose registration failed: name -> (error, the names they tried to register by kind)
        self._broken: dict[str, tuple[str, dict[str, list[str]]]] = {}
        for module in BUILTIN_PLUGINS:
            self.pm.register(importlib.import_module(module), name=module)
        if load_entry_points:
            self._load_entry_points()

    # -- discovery ---------------------------------------------------------
    def _load_entry_points(self) -> None:
        from importlib.metadata import entry_points

        allowed = os.environ.get("PROBEKIT_LOAD_PLUGINS")
        allow = None if allowed is None else {a.strip() for a in allowed.split(",") if a.strip()}
        for ep in entry_points(group="probekit"):
            if allow is not None and ep.name not in allow:
                continue
            if self.pm.get_plugin(ep.name) is not None:
                continue
            dist = getattr(ep, "dist", None)
            version = dist.version if dist is not None else None
            try:
                plugin = ep.load()
                self.pm.register(plugin, name=ep.name)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # a broken plugin (even one calling sys.exit) must not break the CLI
                self._failed.append(PluginInfo(ep.name, ep.value, version, [], {},
                                               error=f"failed to import: {_describe(exc)}"))
                self._dist[ep.name] = (dist.name if dist is not None else ep.name, version)
                continue
            self._dist[ep.name] = (dist.name if dist is not None else ep.name, version)

    def register(self, plugin: Any, name: str | None = None) -> str:
        """Register a plugin object or module (for tests and notebooks)."""
        registered = self.pm.register(plugin, name=name)
        if registered is None:  # pluggy's answer for a name that was blocked (pm.set_blocked)
            raise ValueError(f"plugin {name or plugin!r} is blocked and cannot be registered")
        self._registries = None
        return registered

    def unregister(self, plugin: Any = None, name: str | None = None) -> None:
        self.pm.unregister(plugin, name=name)
        self._registries = None

    # -- registries ----------------------------------------------------------
    def _collect(self) -> dict[str, dict[str, Entry]]:
        """Every plugin's registrations, plugin by plugin in the order they were registered (the core's
        first). A plugin whose registration hook raises, or that registers a name another plugin
        already has, is set aside as broken with its error; the others keep working."""
        registries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self._broken = {}
        by_plugin: dict[str, list[tuple[str, Any]]] = {}
        for kind in KINDS:
            for impl in getattr(self.pm.hook, f"probekit_register_{kind}").get_hookimpls():
                by_plugin.setdefault(impl.plugin_name, []).append((kind, impl))
        order = [name for name, _ in self.pm.list_name_plugin()]
        for provider in sorted(by_plugin, key=lambda n: order.index(n) if n in order else len(order)):
            mine: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
            error = None
            for kind, impl in by_plugin[provider]:

                def register(name: str, factory: Any, *, description: str = "", options: Any = None,
                             _kind: str = kind, _provider: str = provider,
                             _mine: dict[str, dict[str, Entry]] = mine, **meta: Any) -> None:
                    existing = registries[_kind].get(name) or _mine[_kind].get(name)
                    if existing is not None:
                        raise PluginError(
                            f"{_SINGULAR[_kind]} '{name}' is provided by two plugins: "
                            f"'{existing.provider}' and '{_provider}'. Uninstall one of them, or "
                            f"restrict loading with PROBEKIT_LOAD_PLUGINS.")
                    _mine[_kind][name] = Entry(_kind, name, factory, _provider, description, options, meta)

                try:
                    impl.function(register=register)
                except KeyboardInterrupt:
                    raise
                except PluginError as exc:
                    error = error or str(exc)
                except BaseException as exc:
                    error = error or f"{impl.function.__name__} raised {_describe(exc)}"
            if error is None:
                for kind in KINDS:
                    registries[kind].update(mine[kind])
            else:
                self._broken[provider] = (error, {k: sorted(v) for k, v in mine.items() if v})
        return registries

    @property
    def registries(self) -> dict[str, dict[str, Entry]]:
        if self._registries is None:
            self._registries = self._collect()
        return self._registries

    def names(self, kind: str) -> list[str]:
        return sorted(self.registries[kind])

    def get(self, kind: str, name: str, *, path: str = "") -> Entry:
        """The entry of `name`; an unknown name raises an error listing the installed ones."""
        registry = self.registries[kind]
        if name in registry:
            return registry[name]
        singular = _SINGULAR[kind]
        installed = ", ".join(sorted(registry)) or "none"
        fix = f"Installed {kind}: {installed}."
        dist = FIRST_PARTY.get(kind, {}).get(name)
        broken = self._broken_provider(kind, name, dist)
        if broken is not None:
            plugin, error = broken
            raise UnknownTypeError(f"{singular} '{name}' is provided by the plugin '{plugin}', which is broken: "
                                   f"{error}", path=path,
                                   fix="Fix or reinstall that plugin (`probekit plugins` lists it with its error).")
        if dist:
            fix += f" It is provided by {dist}: pip install {dist}"
        else:
            fix += did_you_mean(name, registry)
        broken_names = [i.name for i in self._failed]
        if broken_names:
            fix += (f" Plugins that failed to import (one may provide it): {', '.join(broken_names)}; "
                    f"`probekit plugins` shows their errors.")
        raise UnknownTypeError(f"unknown {singular} '{name}'", path=path, fix=fix)

    def _broken_provider(self, kind: str, name: str, dist: str | None) -> tuple[str, str] | None:
        """(plugin, error) of a broken plugin known to provide `name`, or None."""
        self.registries  # noqa: B018 - collecting finds the broken registrations
        for plugin, (error, provides) in self._broken.items():
            if name in provides.get(kind, []):
                return plugin, error
        for info in self._failed:
            if dist is not None and self._dist.get(info.name, (None,))[0] == dist:
                return info.name, info.error or ""
        return None

    def plugin_infos(self) -> list[PluginInfo]:
        infos: list[PluginInfo] = []
        provided: dict[str, dict[str, list[str]]] = {}
        for kind, registry in self.registries.items():
            for entry in registry.values():
                provided.setdefault(entry.provider, {}).setdefault(kind, []).append(entry.name)
        for name, plugin in self.pm.list_name_plugin():
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            builtin = name.startswith("probekit.builtin")
            dist, version = self._dist.get(name, ("probekit-core", _core_version()) if builtin else (name, None))
            module = getattr(plugin, "__name__", type(plugin).__name__)
            error = self._broken[name][0] if name in self._broken else None
            infos.append(PluginInfo(name, module, version, hooks,
                                    {k: sorted(v) for k, v in provided.get(name, {}).items()}, builtin, error))
        return infos + list(self._failed)

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def notify(self, hook: str, warn: Callable[[str], None], **kwargs: Any) -> None:
        """Call the observers of a lifecycle `hook`; one that raises is reported through `warn`
        and skipped (an observer never fails a run)."""
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            try:
                impl.function(**{k: kwargs[k] for k in impl.argnames if k in kwargs})
            except Exception as exc:
                warn(f"warning: plugin '{impl.plugin_name}': {hook} raised {type(exc).__name__}: {exc} "
                     f"(ignored)")


def _describe(exc: BaseException) -> str:
    """`Type: message` of an exception (SystemExit shows its code)."""
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}) (the plugin called sys.exit)"
    return f"{type(exc).__name__}: {exc}"


def _core_version() -> str:
    from probekit._version import __version__

    return __version__


_manager: PluginManager | None = None
_lock = threading.Lock()


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager (created on first use)."""
    global _manager
    with _lock:
        if _manager is None:
            _manager = PluginManager()
        return _manager


def reset_plugin_manager() -> None:
    """Forget the process-wide manager (tests use this after changing the environment)."""
    global _manager
    with _lock:
        _manager = None


def iter_entries(kind: str) -> Iterator[Entry]:
    yield from get_plugin_manager().registries[kind].values()
