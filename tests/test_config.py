"""Config validation (every error names the bad value), text windows and perplexity."""

from __future__ import annotations

import json
import math

import pytest
import torch

from owl_plugin import AlphaConfig, OWLConfig, UniformConfig, make_config
from owl_plugin.config import config_params
from owl_plugin.evaluation import perplexity
from owl_plugin.text import calibration_batches, load_text


@pytest.mark.parametrize(
    ("build", "value"),
    [
        (lambda: OWLConfig(lam=-0.1), "lam=-0.1"),
        (lambda: OWLConfig(lam=0.5), "lam=0.5"),  # > (0.99 - 0) / 2
        (lambda: OWLConfig(lam=0.2, bounds=(0.5, 0.8)), "lam=0.2"),  # > 0.15
        (lambda: OWLConfig(m=0.0), "m=0.0"),
        (lambda: OWLConfig(m=-2.0), "m=-2.0"),
        (lambda: OWLConfig(m=math.nan), "m=nan"),
        (lambda: OWLConfig(m=math.inf), "m=inf"),  # every unit would count no outlier: a silent uniform
        (lambda: AlphaConfig(epsilon=-0.1), "epsilon=-0.1"),
        (lambda: AlphaConfig(epsilon=1.0), "epsilon=1.0"),
        (lambda: AlphaConfig(xmin="max"), "xmin='max'"),
        (lambda: AlphaConfig(granularity="row"), "granularity='row'"),
        (lambda: UniformConfig(bounds=(0.6, 0.2)), "bounds=(0.6, 0.2)"),
        (lambda: OWLConfig(bounds=(0.0, 1.0)), "bounds=(0.0, 1.0)"),
        (lambda: make_config("owl", foo=1), "'foo'"),
        (lambda: make_config("uniform", granularity="block"), "'granularity'"),
        (lambda: make_config("magic"), "'magic'"),
        (lambda: make_config("alpha", bounds=[-0.5, 0.5]), "-0.5"),
    ],
)
def test_bad_config_names_the_value(build, value):
    with pytest.raises(ValueError) as error:
        build()
    assert value in str(error.value)


def test_make_config_builds_typed_frozen_configs():
    config = make_config("alpha", epsilon=0.3, xmin="median", bounds=[0.1, 0.9])
    assert config == AlphaConfig(epsilon=0.3, xmin="median", bounds=(0.1, 0.9))
    assert make_config("owl") == OWLConfig(m=5.0, lam=0.08, granularity="block", bounds=(0.0, 0.99))
    with pytest.raises(AttributeError):
        config.epsilon = 0.1  # frozen
    params = config_params(config)
    assert params == {"epsilon": 0.3, "xmin": "median", "granularity": "block", "bounds": [0.1, 0.9]}
    json.dumps(params)  # JSON-friendly


def test_lambda_at_the_edge_is_allowed():
    assert OWLConfig(lam=0.495).lam == 0.495


def test_calibration_batches_windows():
    ids = torch.arange(1000)
    batches = calibration_batches(ids, num_samples=5, seq_len=64, seed=3)
    assert len(batches) == 5
    for batch in batches:
        assert batch.shape == (1, 64)
        start = int(batch[0, 0])
        assert torch.equal(batch[0], torch.arange(start, start + 64))  # contiguous windows of the text
    again = calibration_batches(ids, num_samples=5, seq_len=64, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))  # seeded


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 0}, "num_samples=0"),
        ({"seq_len": 1}, "seq_len=1"),
        ({"seq_len": 100}, "too short: 100 tokens, need more than seq_len=100"),
        ({"seq_len": 128}, "too short: 100 tokens, need more than seq_len=128"),
    ],
)
def test_calibration_batches_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        calibration_batches(torch.arange(100), **kwargs)


def test_load_text_local_files(tmp_path):
    (tmp_path / "a.txt").write_text("hello world")
    (tmp_path / "b.json").write_text(json.dumps(["one", {"text": "two"}]))
    (tmp_path / "c.jsonl").write_text('{"text": "x"}\n\n{"text": "y"}\n')
    assert load_text(tmp_path / "a.txt") == "hello world"
    assert load_text(tmp_path / "b.json") == "one\n\ntwo"
    assert load_text(tmp_path / "c.jsonl") == "x\n\ny"
    assert len(load_text("pydoc")) > 10_000
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_text(tmp_path / "missing.txt")
    (tmp_path / "bad.json").write_text(json.dumps([{"content": "z"}]))
    with pytest.raises(ValueError, match="'text'"):
        load_text(tmp_path / "bad.json")


def test_perplexity_matches_model_loss(tiny_model):
    generator = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 512, (3 * 20 + 7,), generator=generator)
    # three windows of 20 tokens; ppl = exp(mean over windows of the mean next-token NLL)
    with torch.no_grad():
        losses = [float(tiny_model(input_ids=ids[i * 20:(i + 1) * 20].unsqueeze(0),
                                   labels=ids[i * 20:(i + 1) * 20].unsqueeze(0)).loss) for i in range(3)]
    expected = math.exp(sum(losses) / 3)
    measured = perplexity(tiny_model, ids, seq_len=20, max_windows=None, progress=False)
    assert measured == pytest.approx(expected, rel=1e-5)
    first = math.exp(losses[0])
    assert perplexity(tiny_model, ids, seq_len=20, max_windows=1, progress=False) == pytest.approx(first, rel=1e-5)
    with pytest.raises(ValueError, match="fewer than one window of 100"):
        perplexity(tiny_model, ids, seq_len=100, progress=False)
