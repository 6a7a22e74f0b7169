"""The orchestrator of ``owl validate``: export compact, run every engine's runner, gather one report.

Steps:
1. check the inputs (the pruned folder and its ``sparsity_profile.json``, the baseline, the text);
2. export the pruned checkpoint compact into ``REPORT/work/compact`` (``owl_plugin.export``), so
   every engine loads both the dense and the compact form;
3. run the transformers runner first — it is the reference (greedy ids, perplexity) for the
   others — then every other engine, each in its own venv, as a subprocess with a time limit
   (``launch.run_with_limit``); a missing venv, a crash, a timeout or a malformed RESULT.json is
   a failed engine carrying the runner's own error, never a pass;
4. compute speed-ups, apply ``--min-speedup``, write ``report.json``, ``report.md`` and
   ``report.png`` (``report.py``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from owl_plugin.validation.checks import STEP_PREFIX
from owl_plugin.validation.engines import ENGINES, REFERENCE, missing_venv_message, venv_python
from owl_plugin.validation.launch import run_with_limit
from owl_plugin.validation.protocol import (
    Check, EngineRequest, EngineResult, ServeSettings, SpeedRow, SpeedSettings, Tolerances,
)
from owl_plugin.validation.thresholds import Speedup, Threshold, apply_thresholds, speedups

logger = logging.getLogger(__name__)

DEFAULT_PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "Sparse neural networks are",
    "Once upon a time, in a small village,",
)
DEFAULT_TIMEOUT = 2400.0  # seconds per engine runner


@dataclass(frozen=True)
class ValidationOptions:
    """Everything ``owl validate`` was asked (see ``owl validate --help``)."""

    pruned: Path
    report_dir: Path
    engines: Sequence[str] = (REFERENCE,)
    baseline: Path | None = None
    prompts: Sequence[str] = DEFAULT_PROMPTS
    max_new_tokens: int = 32
    text: str | None = None
    ppl_windows: int = 8
    seq_len: int = 512
    bos: str = "auto"
    speed: SpeedSettings | None = field(default_factory=SpeedSettings)
    serve: ServeSettings | None = None
    tolerances: Tolerances = field(default_factory=Tolerances)
    venvs: Mapping[str, str] = field(default_factory=dict)
    timeouts: Mapping[str, float] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT
    min_speedup: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [e for e in self.engines if e not in ENGINES]
        if unknown:
            raise ValueError(f"unknown engine {unknown[0]!r}; choose from {', '.join(ENGINES)}")
        if self.timeout <= 0 or any(t <= 0 for t in self.timeouts.values()):
            raise ValueError(f"time limits must be > 0 seconds, got {self.timeout} and {dict(self.timeouts)}")


@dataclass
class EngineReport:
    """One engine's outcome: ``passed``, ``failed`` (a check failed), ``crashed``, ``timeout`` or ``missing``."""

    engine: str
    status: str
    checks: list[Check] = field(default_factory=list)
    speed: list[SpeedRow] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    ppl: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    log: str | None = None
    python: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass
class SuiteReport:
    """The whole run; ``passed`` decides the exit status."""

    pruned: str
    compact: str | None
    baseline: str | None
    settings: dict[str, Any]
    suite_checks: list[Check] = field(default_factory=list)
    engines: list[EngineReport] = field(default_factory=list)
    speedups: list[Speedup] = field(default_factory=list)
    thresholds: list[Threshold] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failures(self) -> list[str]:
        """One line per failure: suite check, engine check, engine error, unmet threshold."""
        lines = [f"suite: {c.name}: {c.detail}" for c in self.suite_checks if not c.passed]
        for engine in self.engines:
            if engine.error:
                lines.append(f"{engine.engine}: {engine.status}: {engine.error}")
            lines += [f"{engine.engine}: {c.name}: {c.detail}" for c in engine.checks if not c.passed]
        lines += [t.detail for t in self.thresholds if not t.passed]
        return lines

    @property
    def passed(self) -> bool:
        return bool(self.engines) and not self.failures and all(e.passed for e in self.engines)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        data["failures"] = self.failures
        return data


def _check_inputs(options: ValidationOptions) -> None:
    from owl_plugin.profile import PROFILE_FILENAME

    pruned = options.pruned
    if not (pruned / "config.json").is_file():
        raise FileNotFoundError(f"PRUNED_DIR {pruned} is not a checkpoint folder (no config.json); pass the output "
                                "folder of `owl prune`")
    if not (pruned / PROFILE_FILENAME).is_file():
        raise FileNotFoundError(f"{pruned} has no {PROFILE_FILENAME}; the suite checks the engines' weights against "
                                "it — prune with `owl prune`, or add the profile of the run that pruned it")
    if options.baseline is not None and not (options.baseline / "config.json").is_file():
        raise FileNotFoundError(f"--baseline {options.baseline} is not a checkpoint folder (no config.json); pass "
                                "the dense model's folder, or 'default' for SmolLM2-135M")
    if options.speed is not None and options.baseline is None:
        raise ValueError("speed is measured against --baseline, which is missing; pass --baseline DENSE_DIR or "
                         "--no-speed")
    if options.min_speedup and options.speed is None:
        raise ValueError(f"--min-speedup {dict(options.min_speedup)} needs speed measurements; drop --no-speed")
    report = options.report_dir.absolute().resolve()
    for folder in (pruned, options.baseline):
        if folder is not None and (report == folder.resolve() or folder.resolve() in report.parents):
            raise ValueError(f"--report {options.report_dir} is or lies inside the checkpoint {folder}; choose a "
                             "report folder outside it")
    if options.text is not None:  # a local text is read now, before any folder is made
        from owl_plugin.text import load_text

        text = options.text
        if Path(text).expanduser().exists() or Path(text).suffix in {".txt", ".json", ".jsonl"} or \
                text.startswith(("/", "./", "../", "~")) or not any(mark in text for mark in "/:@"):
            load_text(text)


def _text_file(options: ValidationOptions, work: Path) -> Path:
    """The evaluation text as a local file every runner can read (a hub dataset or 'pydoc' is written once)."""
    from owl_plugin.paths import default_eval_text
    from owl_plugin.text import load_text

    source = options.text or str(default_eval_text())
    path = Path(source).expanduser()
    if path.is_file() and path.suffix not in {".json", ".jsonl"}:
        return path.resolve()
    target = work / "eval_text.txt"
    target.write_text(load_text(source), encoding="utf-8")
    return target


def _export_compact(pruned: Path, work: Path) -> tuple[Path | None, Check]:
    """The compact export of ``pruned`` (made here, so engines load both forms) and its suite check."""
    from owl_plugin.export import export_checkpoint

    target = work / "compact"
    try:
        result = export_checkpoint(pruned, target, format="compact", overwrite=True)
    except Exception as error:  # noqa: BLE001 - reported as a failed check
        from owl_plugin.validation.checks import error_text

        return None, Check("export/compact", False, f"owl export --format compact failed: {error_text(error)}")
    return target, Check("export/compact", True, result.summary(),
                         {"pruned_ratio": result.pruned_ratio, "checkpoint_ratio": result.checkpoint_ratio,
                          "pruned_modules": len(result.pruned_modules)})


def _reference(result: EngineResult | None) -> dict[str, Any] | None:
    """The transformers runner's generations and perplexities, as the other engines' reference."""
    if result is None or not result.generated:
        return None
    reference = {}
    for model in ("pruned", "baseline"):
        if model in result.generated:
            reference[model] = {"generated_ids": result.generated[model], "ppl": result.ppl.get(model),
                                "margins": result.notes.get("margins", {}).get(model),
                                "prompt_ids": result.notes.get("prompt_ids"),
                                "windows": result.notes.get("windows")}
        else:
            reference[model] = None
    return reference


def _runner_env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    # GiB per vLLM engine (two may be loaded); its CPU default is far larger
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("VLLM_CACHE_ROOT", str(work / "vllm-cache"))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_engine(engine: str, request: EngineRequest, *, python: Path, timeout: float, work: Path) -> tuple[
        EngineReport, EngineResult | None]:
    """Run one runner and turn whatever happened into an :class:`EngineReport`."""
    engine_dir = Path(request.work_dir)
    engine_dir.mkdir(parents=True, exist_ok=True)
    request_path = request.save(engine_dir / "request.json")
    result_path = engine_dir / "result.json"
    result_path.unlink(missing_ok=True)
    report = EngineReport(engine, "crashed", python=str(python))
    if not python.exists():
        report.status, report.error = "missing", missing_venv_message(engine, python)
        logger.error("%s", report.error)
        return report, None
    command = [str(python), "-m", ENGINES[engine].module, str(request_path), str(result_path)]
    logger.info("running %s (time limit %.0f s): %s", engine, timeout, " ".join(command))
    began = time.monotonic()

    def show_step(line: str) -> None:  # the runner's step announcements, so a long run is not silent
        if line.startswith(STEP_PREFIX):
            logger.info("%s: %s (at %.0f s)", engine, line[len(STEP_PREFIX):], time.monotonic() - began)

    outcome = run_with_limit(command, timeout=timeout, log=engine_dir / "runner.log", env=_runner_env(work),
                             on_line=show_step)
    report.seconds, report.log = round(outcome.seconds, 1), str(outcome.log)
    if outcome.timed_out:
        report.status = "timeout"
        report.error = f"the {engine} runner did not finish within its time limit of {timeout:.0f} s and was " \
                       f"killed; last output:\n{outcome.tail()}"
        return report, None
    if outcome.returncode != 0 or not result_path.is_file():
        report.error = (f"the {engine} runner exited with status {outcome.returncode}"
                        f"{'' if result_path.is_file() else ' without writing RESULT.json'}; its own error:\n"
                        f"{outcome.tail()}")
        return report, None
    try:
        result = EngineResult.load(result_path)
    except (ValueError, json.JSONDecodeError) as error:
        report.error = f"the {engine} runner wrote a malformed {result_path}: {error}"
        return report, None
    report.checks, report.speed, report.versions = result.checks, result.speed, result.versions
    report.ppl, report.notes = result.ppl, result.notes
    if not result.checks:
        report.status, report.error = "failed", f"the {engine} runner reported no checks"
    else:
        report.status = "passed" if result.passed else "failed"
    return report, result


def validate(options: ValidationOptions) -> SuiteReport:
    """Run the suite and write the report folder; see the module docstring."""
    from owl_plugin.validation.report import write_report

    started = time.perf_counter()
    _check_inputs(options)
    report_dir = options.report_dir.absolute()
    work = report_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    pruned = options.pruned.resolve()
    baseline = options.baseline.resolve() if options.baseline else None
    text = _text_file(options, work)
    compact, export_check = _export_compact(pruned, work)
    settings = {
        "engines": list(options.engines), "prompts": list(options.prompts), "max_new_tokens": options.max_new_tokens,
        "text": str(text), "ppl_windows": options.ppl_windows, "seq_len": options.seq_len, "bos": options.bos,
        "speed": asdict(options.speed) if options.speed else None,
        "serve": asdict(options.serve) if options.serve else None, "tolerances": asdict(options.tolerances),
        "timeout": options.timeout, "timeouts": dict(options.timeouts), "min_speedup": dict(options.min_speedup),
        "python": sys.executable,
    }
    suite = SuiteReport(str(pruned), str(compact) if compact else None, str(baseline) if baseline else None,
                        settings, suite_checks=[export_check])
    reference = None
    for engine in options.engines:
        request = EngineRequest(
            engine=engine, pruned=str(pruned), baseline=str(baseline) if baseline else None,
            compact=str(compact) if compact else None, work_dir=str(work / engine), prompts=list(options.prompts),
            max_new_tokens=options.max_new_tokens, reference=None if engine == REFERENCE else reference,
            text=str(text), ppl_windows=options.ppl_windows, seq_len=options.seq_len, speed=options.speed,
            serve=options.serve if engine == "vllm" else None, tolerances=options.tolerances, bos=options.bos,
        )
        engine_report, result = run_engine(engine, request, python=venv_python(engine, options.venvs),
                                           timeout=options.timeouts.get(engine, options.timeout), work=work)
        logger.info("%s: %s (%d/%d checks passed, %.0f s)", engine, engine_report.status,
                    sum(c.passed for c in engine_report.checks), len(engine_report.checks), engine_report.seconds)
        if engine == REFERENCE:
            reference = _reference(result)
        suite.engines.append(engine_report)
        suite.speedups += speedups(engine, engine_report.speed)
    suite.thresholds = apply_thresholds(options.min_speedup, suite.speedups)
    suite.seconds = round(time.perf_counter() - started, 1)
    write_report(suite, report_dir)
    return suite
