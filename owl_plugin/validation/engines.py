"""Which engines ``owl validate`` knows, the venv each runs in, and the runner module it executes."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REFERENCE = "transformers"


@dataclass(frozen=True)
class Engine:
    """One engine: its runner module and the venv (relative to the checkout) built by ``make``."""

    name: str
    module: str
    venv: str
    setup: str


ENGINES: Mapping[str, Engine] = {
    "transformers": Engine("transformers", "owl_plugin.integrations.transformers.validate", ".venv", "make setup"),
    "vllm": Engine("vllm", "owl_plugin.integrations.vllm.validate", ".venv-vllm", "make setup-vllm"),
    "openvino": Engine("openvino", "owl_plugin.integrations.openvino.validate", ".venv-openvino",
                       "make setup-openvino"),
}


def checkout_root() -> Path:
    """The source checkout holding the venvs (the package is installed editable from it)."""
    return Path(__file__).resolve().parent.parent.parent


def parse_engines(text: str) -> list[str]:
    """``"transformers,vllm"`` → ``["transformers", "vllm"]`` (transformers, the reference, always first)."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ENGINES]
    if unknown or not names:
        raise ValueError(f"--engines {text!r}: unknown engine {unknown[0] if unknown else '(none)'!r}; "
                         f"choose from {', '.join(ENGINES)} (comma-separated)")
    ordered = [REFERENCE] + [name for name in dict.fromkeys(names) if name != REFERENCE]
    return ordered


def parse_pairs(values: Sequence[str] | None, option: str, *, kind: type = str) -> dict[str, object]:
    """``["vllm=/opt/venv"]`` → ``{"vllm": "/opt/venv"}``, with errors naming the bad pair."""
    pairs: dict[str, object] = {}
    for value in values or ():
        engine, sep, raw = value.partition("=")
        engine = engine.strip().lower()
        if not sep or engine not in ENGINES:
            raise ValueError(f"{option} {value!r}: expected ENGINE=VALUE with ENGINE one of {', '.join(ENGINES)}")
        try:
            pairs[engine] = kind(raw)
        except ValueError:
            raise ValueError(f"{option} {value!r}: {raw!r} is not a valid {kind.__name__}") from None
    return pairs


def venv_python(engine: str, venvs: Mapping[str, str | os.PathLike] | None = None) -> Path:
    """The python of ``engine``'s venv: ``--venv ENGINE=PATH`` (a venv folder or its python), else the default."""
    spec = ENGINES[engine]
    chosen = (venvs or {}).get(engine)
    venv = Path(chosen) if chosen else checkout_root() / spec.venv
    if venv.is_file() or venv.name.startswith("python"):
        return venv
    return venv / "bin" / "python"


def missing_venv_message(engine: str, python: Path) -> str:
    spec = ENGINES[engine]
    return (f"the {engine} environment is missing: {python} does not exist; build it with `{spec.setup}` "
            f"or point to one with --venv {engine}=PATH")
