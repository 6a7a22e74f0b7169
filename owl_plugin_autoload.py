"""Start-up hook of owl-plugin, run by ``owl_plugin_autoload.pth`` in site-packages.

It registers owl-plugin with the libraries a user imports, without ``import owl_plugin``:

* ``transformers.modeling_utils`` (where ``from_pretrained`` lives) → the compact
  (``owl_sparse``) checkpoint loader, so ``AutoModelForCausalLM.from_pretrained(compact_dir)`` works;
* ``llmcompressor`` → the allocation modifiers, so YAML recipes can name
  ``OWLAllocationModifier`` / ``AlphaAllocationModifier``;
* ``optimum.intel.openvino.modeling_base`` → ``OVModelForCausalLM.from_pretrained(ir_dir)`` applies
  the sparse-kernel compile properties an ``owl export --format openvino`` stored beside the IR.

At interpreter start it costs this module only: it imports nothing but ``os`` and ``sys``
(both already loaded) and puts a finder in front of ``sys.meta_path`` that ignores every
import except the trigger modules. When a trigger module has finished executing, its
integration is imported; once every trigger has fired the finder removes itself.
``OWL_PLUGIN_NO_AUTOLOAD=1`` turns the hook off.
"""

import os
import sys

#: trigger module (fully executed) → the owl-plugin integration that registers with it
TRIGGERS = {
    "transformers.modeling_utils": "owl_plugin.integrations.transformers",
    "llmcompressor": "owl_plugin.integrations.llmcompressor.modifiers",
    "optimum.intel.openvino.modeling_base": "owl_plugin.integrations.openvino.registration",
}
DISABLE_ENV = "OWL_PLUGIN_NO_AUTOLOAD"
_pending = dict(TRIGGERS)


def register_now(trigger: str) -> None:
    """Import the trigger's integration; never let a failure break the user's import."""
    integration = _pending.pop(trigger, None)
    if integration is None:
        return
    try:
        __import__(integration)
    except Exception as error:  # noqa: BLE001 - a start-up hook must not break the user's import
        import warnings

        warnings.warn(f"owl-plugin could not register with {trigger} ({error!r}); "
                      f"`import {integration}` shows the full error.", RuntimeWarning, stacklevel=2)


class _RegisteringLoader:
    """Wraps the trigger module's loader: run it, then register and retire the finder."""

    def __init__(self, loader, finder, trigger):
        self._loader = loader
        self._finder = finder
        self._trigger = trigger

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self._loader  # the module keeps its real loader (inspect, importlib.resources)
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        register_now(self._trigger)
        if not _pending and self._finder in sys.meta_path:
            sys.meta_path.remove(self._finder)  # retired (not in find_spec: the import system iterates)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._loader, name)


class AutoloadFinder:
    """A ``sys.meta_path`` finder that reacts to the trigger module names only."""

    owl_plugin_autoload = True  # marker: one instance per interpreter even if this module is re-imported

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _pending:
            return None
        for finder in list(sys.meta_path):
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec and finder is not self else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RegisteringLoader(spec.loader, self, fullname)
        return spec


def install() -> None:
    """Put the finder in place (or register at once if transformers is already loaded)."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return
    for trigger in [t for t in _pending if t in sys.modules]:
        register_now(trigger)
    if _pending and not any(getattr(finder, "owl_plugin_autoload", False) for finder in sys.meta_path):
        sys.meta_path.insert(0, AutoloadFinder())


install()
