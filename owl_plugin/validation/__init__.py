"""Validation suite: do real serving engines load, agree with, and speed up a pruned model?

    owl validate PRUNED_DIR --baseline DENSE_DIR --engines transformers,vllm,openvino [--report out/]
        [--serve] [--min-speedup vllm=1.1] [--venv vllm=/path/to/venv] [--timeout 2400]

The orchestrator (this package, framework-free) exports PRUNED_DIR compact, then runs one runner
per engine in that engine's venv as a time-limited subprocess (``PROTOCOL.md``: REQUEST.json in,
RESULT.json out); transformers runs first and is the reference. Modules:

* ``protocol``   — REQUEST/RESULT dataclasses (``EngineRequest``, ``EngineResult``, ``Check``, ``SpeedRow``);
* ``checks``     — the checks runners share (sparsity read back, greedy and perplexity agreement);
* ``timing``     — interleaved dense/pruned timing with medians and spread;
* ``engines``    — engine → venv and runner module, ``--venv`` / ``--engines`` parsing;
* ``launch``     — subprocess with a time limit, process-group kill, log capture;
* ``thresholds`` — speed-ups and ``--min-speedup``;
* ``report``     — report.json, report.md, report.png;
* ``suite``      — the orchestration (``validate(ValidationOptions)``);
* ``cli``        — ``owl validate`` (``register(subparsers)``).

Runners: ``owl_plugin.integrations.transformers.validate``, ``owl_plugin.integrations.vllm.validate``,
``owl_plugin.integrations.openvino.validate``.
"""
