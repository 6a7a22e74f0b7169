"""transformers adapter: ``AutoModelForCausalLM.from_pretrained`` reads compact (owl_sparse) checkpoints.

Importing this package registers the ``owl_sparse`` quantization method (``register()`` is
idempotent). Nobody has to import it by hand: owl-plugin ships a start-up hook
(``owl_plugin_autoload.pth`` → ``owl_plugin_autoload``) that imports it right after
``transformers.modeling_utils`` is imported, i.e. before any ``from_pretrained`` can run.

What transformers 5.17 does with a compact checkpoint when this plugin is *not* loaded
(``quantizers/auto.py``, ``AutoHfQuantizer.supports_quant_method``): an unknown ``quant_method``
is only a warning ("Unknown quantization type ... we will skip the quantization"); the model
is built unquantized, ``*.weight_values/_bitmask/_shape`` are reported as unexpected keys, and
every pruned weight is missing and silently random-initialised. Raising from config.json alone
is not possible without breaking other readers, so compact checkpoints carry a load guard:
``"transformers_weights"`` (which transformers 5 reads to choose the weights file) names a file
that does not exist, and plain transformers stops with ``FileNotFoundError: ...
owl_sparse-checkpoint--load-it-with-owl-plugin--pip-install-owl-plugin.safetensors``. The
quantizer removes that key in ``update_tp_plan``, which transformers calls before it resolves
the weights files. vLLM finds weights by itself and never reads the key.

Loading with the plugin: ``OwlSparseConfig`` validates ``quantization_config``;
``OwlSparseHfQuantizer`` checks every compressed tensor before loading (errors name the
tensor) and maps ``weight_values$``/``weight_bitmask$``/``weight_shape$`` onto ``weight``
through ``OwlSparseDecompress``, which casts to the parameter's dtype. The loaded model is
dense; its quantization config is dropped, so ``save_pretrained`` writes a dense checkpoint.
"""

from owl_plugin.integrations.transformers.registration import is_registered, register

register()

__all__ = ["is_registered", "register"]
