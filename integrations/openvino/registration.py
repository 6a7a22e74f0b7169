"""Make ``OVModelForCausalLM.from_pretrained(DIR)`` apply the compile properties stored in DIR.

optimum-intel takes ``ov_config`` only as a keyword argument, and the OpenVINO core does not
apply ``CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE`` from an IR's ``runtime_options``; so a plain
``from_pretrained`` of an owl-plugin export would run the CPU's default precision (bf16 where
AVX512_BF16 exists, a u8 KV cache) instead of the f32 the export measured, and in static mode dense
kernels. owl-plugin's start-up
hook (``owl_plugin_autoload``) imports this module when ``optimum.intel.openvino.modeling_base``
is imported, and :func:`register` wraps ``OVBaseModel.from_pretrained``: when the folder holds
``owl_openvino.json``, its ``ov_config`` is merged under the caller's (explicit entries win).
Folders without the file, and hub ids, load exactly as before.

Trust: the hook runs in every process of the venv, so it applies only what an owl-plugin export
writes (the precision pins and the sparse rate, ``modes.STORED_PROPERTIES``; anything else is
refused by name), only to the one ``from_pretrained`` call, and only from the folder whose IR is
being loaded (``model_id`` + ``subfolder``, holding ``file_name``); a symbolic-linked settings file
is refused. Nothing is set process-wide (no ``Core.set_property``, no environment).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

_MARK = "_owl_plugin_wrapped"


def register() -> None:
    """Wrap ``OVBaseModel.from_pretrained`` once (idempotent)."""
    from optimum.intel.openvino.modeling_base import OVBaseModel

    original = OVBaseModel.__dict__["from_pretrained"]
    if getattr(original, _MARK, False):
        return
    function = original.__func__

    @functools.wraps(function)
    def from_pretrained(cls, model_id, *args, **kwargs):
        from owl_plugin.integrations.openvino.export import stored_ov_config

        from owl_plugin.integrations.openvino.ir import IR_NAME

        folder = Path(str(model_id)) / str(kwargs.get("subfolder") or "")  # the folder whose IR is loaded
        ir_name = Path(str(kwargs.get("file_name") or IR_NAME)).name
        stored = stored_ov_config(folder, ir_name) if folder.is_dir() else {}
        if stored:
            kwargs["ov_config"] = {**stored, **(kwargs.get("ov_config") or {})}
            logger.info("%s: compile properties from owl_openvino.json: %s", folder, stored)
        return function(cls, model_id, *args, **kwargs)

    wrapped = classmethod(from_pretrained)
    setattr(wrapped, _MARK, True)
    OVBaseModel.from_pretrained = wrapped


register()
