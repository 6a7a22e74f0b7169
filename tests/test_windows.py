"""One window builder (owl_plugin.text) for every calibration and perplexity path, starting each window
as the model was trained: ``[BOS] + L−1`` text tokens when the tokenizer prepends BOS, raw L tokens otherwise.

The tokenizers are real ``tokenizers`` word-level tokenizers built offline: one prepends ``<s>`` through a
TemplateProcessing post-processor (as Llama / Gemma tokenizers do), one has a BOS token but adds nothing
(as SmolLM2's does). The reference perplexities are computed here, independently of owl_plugin.
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pytest
import torch

from conftest import tiny_llama
from owl_plugin.text import (
    calibration_batches,
    evaluation_windows,
    tokenizer_adds_bos,
    window_protocol,
)

WORDS = [f"w{i}" for i in range(200)]
BOS_ID = 1
SEQ_LEN = 48
WINDOWS = 5


def word_tokenizer(*, prepends_bos: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": BOS_ID, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")
    if prepends_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                          special_tokens=[("<s>", BOS_ID)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(" ".join(rng.choice(WORDS[:60]) for _ in range(3000)))
    return path


def checkpoint(folder: Path, *, prepends_bos: bool) -> Path:
    tiny_llama(seed=5).save_pretrained(folder)
    word_tokenizer(prepends_bos=prepends_bos).save_pretrained(folder)
    return folder


def reference_ppl(model, ids: list[int], *, seq_len: int, windows: int, bos: int | None) -> float:
    """exp(Σ NLL / (W·(L−1))), written out: window w is [BOS] + ids[w(L−1):(w+1)(L−1)] or ids[wL:(w+1)L]."""
    span = seq_len - 1 if bos is not None else seq_len
    nll = 0.0
    for w in range(windows):
        window = ([bos] if bos is not None else []) + ids[w * span:(w + 1) * span]
        assert len(window) == seq_len
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([window])).logits[0].double(), dim=-1)
        nll -= sum(float(logp[i - 1, window[i]]) for i in range(1, seq_len))
    return math.exp(nll / (windows * (seq_len - 1)))


def cli_ppl(capsys, folder: Path, text: Path, *extra: str) -> tuple[float, str]:
    from owl_plugin.cli import main

    assert main(["perplexity", str(folder), "--text", str(text), "--windows", str(WINDOWS),
                 "--seq-len", str(SEQ_LEN), *extra]) == 0
    out = capsys.readouterr().out
    return float(re.search(r"perplexity ([0-9.]+)", out).group(1)), out


def test_bos_detection_and_forcing() -> None:
    with_bos, without = word_tokenizer(prepends_bos=True), word_tokenizer(prepends_bos=False)
    assert tokenizer_adds_bos(with_bos) and not tokenizer_adds_bos(without)
    assert window_protocol(with_bos).bos_token_id == BOS_ID
    assert window_protocol(without).bos_token_id is None
    assert window_protocol(with_bos, "off").bos_token_id is None
    assert window_protocol(without, "on").bos_token_id == BOS_ID
    recorded = window_protocol(with_bos).as_dict()
    assert recorded["bos"] and recorded["choice"] == "auto" and recorded["tokenizer_adds_bos"] and recorded["rule"]
    with pytest.raises(ValueError, match="bos='yes' is not one of auto, on, off"):
        window_protocol(with_bos, "yes")
    without.bos_token = None
    with pytest.raises(ValueError, match="no BOS token"):
        window_protocol(without, "on")


def test_default_model_tokenizer_adds_no_bos(tokenizer) -> None:
    """SmolLM2 (the default model) keeps raw windows, so its numbers do not change."""
    assert window_protocol(tokenizer).bos_token_id is None


def test_evaluation_windows() -> None:
    ids = list(range(10, 30))
    assert evaluation_windows(ids, seq_len=5) == [ids[0:5], ids[5:10], ids[10:15], ids[15:20]]
    assert evaluation_windows(torch.tensor(ids), seq_len=5, max_windows=2, bos_token_id=1) == [
        [1, *ids[0:4]], [1, *ids[4:8]]]
    assert len(evaluation_windows(ids, seq_len=5, bos_token_id=1)) == 5
    with pytest.raises(ValueError, match="fewer than one window of 21 text tokens"):
        evaluation_windows(ids, seq_len=22, bos_token_id=1)


def test_calibration_windows_start_with_bos_and_raw_ones_are_unchanged() -> None:
    ids = torch.arange(1000, 1300)
    raw = calibration_batches(ids, num_samples=4, seq_len=16, seed=7)
    starts = torch.randint(0, 300 - 16, (4,), generator=torch.Generator().manual_seed(7)).tolist()
    assert [b[0].tolist() for b in raw] == [list(range(1000 + s, 1016 + s)) for s in starts]  # as before BOS
    with_bos = calibration_batches(ids, num_samples=4, seq_len=16, seed=7, bos_token_id=BOS_ID)
    for batch in with_bos:
        window = batch[0].tolist()
        assert batch.shape == (1, 16) and window[0] == BOS_ID
        assert window[1:] == list(range(window[1], window[1] + 15))  # 15 consecutive text tokens
    with pytest.raises(ValueError, match="need more than 15 text tokens"):
        calibration_batches(torch.arange(15), num_samples=1, seq_len=16, bos_token_id=BOS_ID)


def test_owl_perplexity_uses_bos_windows_when_the_tokenizer_prepends_bos(tmp_path, text_file, capsys) -> None:
    folder = checkpoint(tmp_path / "bos", prepends_bos=True)
    model = tiny_llama(seed=5)
    ids = word_tokenizer(prepends_bos=True)(text_file.read_text(), add_special_tokens=False).input_ids
    expected = reference_ppl(model, ids, seq_len=SEQ_LEN, windows=WINDOWS, bos=BOS_ID)
    raw = reference_ppl(model, ids, seq_len=SEQ_LEN, windows=WINDOWS, bos=None)
    assert abs(raw - expected) / expected > 1e-3  # the two protocols are distinguishable on this model

    got, out = cli_ppl(capsys, folder, text_file)
    assert "--bos auto: tokenizer prepends BOS" in out
    assert got == pytest.approx(expected, rel=1e-3)
    forced_off, out = cli_ppl(capsys, folder, text_file, "--bos", "off")
    assert "forced by --bos off" in out and forced_off == pytest.approx(raw, rel=1e-3)


def test_owl_perplexity_keeps_raw_windows_when_the_tokenizer_adds_nothing(tmp_path, text_file, capsys) -> None:
    folder = checkpoint(tmp_path / "raw", prepends_bos=False)
    model = tiny_llama(seed=5)
    ids = word_tokenizer(prepends_bos=False)(text_file.read_text(), add_special_tokens=False).input_ids
    got, out = cli_ppl(capsys, folder, text_file)
    assert "tokenizer adds no BOS" in out
    assert got == pytest.approx(reference_ppl(model, ids, seq_len=SEQ_LEN, windows=WINDOWS, bos=None), rel=1e-3)
    forced_on, _ = cli_ppl(capsys, folder, text_file, "--bos", "on")
    assert forced_on == pytest.approx(reference_ppl(model, ids, seq_len=SEQ_LEN, windows=WINDOWS, bos=BOS_ID),
                                      rel=1e-3)


def test_profile_records_the_window_protocol(tmp_path, text_file, capsys) -> None:
    from owl_plugin.cli import main

    folder = checkpoint(tmp_path / "bos", prepends_bos=True)
    assert main(["profile", str(folder), "--method", "owl", "--sparsity", "0.5", "--calibration", str(text_file),
                 "--num-samples", "2", "--seq-len", "32", "--output", str(tmp_path / "out")]) == 0
    assert "tokenizer prepends BOS" in capsys.readouterr().out
    params = json.loads((tmp_path / "out" / "sparsity_profile.json").read_text())["params"]
    windows = params["calibration"]["windows"]
    assert windows["bos"] and windows["bos_token_id"] == BOS_ID and windows["choice"] == "auto"


def test_tune_windows_start_with_bos_and_a_resume_across_protocols_is_refused(tmp_path) -> None:
    from owl_plugin.tuning.cache import StatisticsCache
    from owl_plugin.tuning.search import TuneSettings, check_protocol, split_calibration

    settings = TuneSettings(num_samples=2, seq_len=16, heldout_windows=2, heldout_seq_len=16)
    batches, heldout = split_calibration(torch.arange(3, 400), settings, bos_token_id=BOS_ID)
    assert all(w.shape == (1, 16) and int(w[0, 0]) == BOS_ID for w in [*batches, *heldout])
    assert heldout[0][0, 1:].tolist() == list(range(heldout[0][0, 1].item(), heldout[0][0, 1].item() + 15))
    cache = StatisticsCache(tmp_path, "key")
    check_protocol(cache, window_protocol(word_tokenizer(prepends_bos=False)).as_dict())
    check_protocol(cache, window_protocol(word_tokenizer(prepends_bos=False)).as_dict())  # same: resumes
    with pytest.raises(ValueError, match="not comparable"):
        check_protocol(cache, window_protocol(word_tokenizer(prepends_bos=True)).as_dict())


def test_validate_engine_refuses_to_compare_across_window_protocols() -> None:
    from owl_plugin.validation.checks import engine_windows
    from owl_plugin.validation.protocol import EngineRequest, EngineResult

    reference = {"pruned": {"windows": window_protocol(word_tokenizer(prepends_bos=False)).as_dict()}}
    request = EngineRequest(engine="vllm", pruned="p", work_dir="w", prompts=["x"], text="t", reference=reference)
    result = EngineResult("vllm")
    protocol = engine_windows(result, request, word_tokenizer(prepends_bos=True))
    assert protocol.bos and result.notes["windows"]["bos_token_id"] == BOS_ID
    assert [(c.name, c.passed) for c in result.checks] == [("agrees/windows", False)]
    assert "not comparable" in result.checks[0].detail
    same = EngineResult("vllm")
    engine_windows(same, request, word_tokenizer(prepends_bos=False))
    assert [(c.name, c.passed) for c in same.checks] == [("agrees/windows", True)]


REPO = Path(__file__).resolve().parent.parent
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
OPENVINO_PYTHON = REPO / ".venv-openvino" / "bin" / "python"


def pruned_bos_checkpoint(folder: Path):
    """A tiny Llama (head_dim 64: vLLM's CPU attention does not take the tiny model's 16) whose tokenizer
    prepends BOS, every decoder linear magnitude-pruned to 50% per row, with its profile; the model."""
    from owl_plugin.profile import ModuleSparsity, SparsityProfile

    from transformers import LlamaConfig, LlamaForCausalLM

    word_tokenizer(prepends_bos=True).save_pretrained(folder)
    torch.manual_seed(5)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, vocab_size=512,
                                         max_position_embeddings=512)).eval()
    modules = {}
    with torch.no_grad():
        for name, linear in model.named_modules():
            if name.startswith("model.layers.") and isinstance(linear, torch.nn.Linear):
                weight = linear.weight
                weight.scatter_(1, weight.abs().argsort(dim=1)[:, : weight.shape[1] // 2], 0.0)
                modules[name] = ModuleSparsity(0.5, weight.numel(), name.rsplit(".", 2)[0])
    model.save_pretrained(folder)
    SparsityProfile(method="magnitude", target=0.5, modules=modules).save(folder)
    return model


def validate_bos_windows(tmp_path: Path, text_file: Path, engine: str, venv: Path) -> tuple[dict, float]:
    """``owl validate`` of pruned_bos_checkpoint in transformers and ``engine``: both record BOS windows, the
    engine's windows agree with transformers'; the engine's report and the reference perplexity (the core's
    BOS windows on the same torch model)."""
    from conftest import run_cli

    folder = tmp_path / "bos"
    model = pruned_bos_checkpoint(folder)
    report_dir = tmp_path / "report"
    result = run_cli("validate", str(folder), "--engines", f"transformers,{engine}", "--report", str(report_dir),
                     "--text", str(text_file), "--ppl-windows", "4", "--seq-len", "64", "--max-new-tokens", "4",
                     "--prompts", "w1 w2 w3", "--venv", f"{engine}={venv}", timeout=1200)
    report = json.loads((report_dir / "report.json").read_text())
    engines = {e["engine"]: e for e in report["engines"]}
    assert set(engines) == {"transformers", engine}, result.stderr[-3000:]
    for name in ("transformers", engine):
        windows = engines[name]["notes"]["windows"]
        assert windows["bos"] and windows["bos_token_id"] == BOS_ID, (name, windows)
    checks = {c["name"]: c for c in engines[engine]["checks"]}
    assert checks["agrees/windows"]["passed"], checks["agrees/windows"]
    assert report["settings"]["bos"] == "auto"
    ids = word_tokenizer(prepends_bos=True)(text_file.read_text(), add_special_tokens=False).input_ids
    expected, raw = (reference_ppl(model, ids, seq_len=64, windows=4, bos=bos) for bos in (BOS_ID, None))
    assert abs(raw - expected) / expected > 1e-2  # raw windows would be told apart
    return engines[engine], expected


@pytest.mark.slow
@pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="the vLLM venv is missing (make setup-vllm)")
def test_vllm_scores_the_same_bos_windows_as_transformers(tmp_path, text_file) -> None:
    """Real engines: vLLM's perplexity (from prompt_logprobs of its own windows) agrees with transformers' to the
    fp32 tolerance, which it would not if either scored raw windows."""
    vllm, expected = validate_bos_windows(tmp_path, text_file, "vllm", VLLM_PYTHON.parent.parent)
    checks = {c["name"]: c for c in vllm["checks"]}
    assert checks["agrees/perplexity-pruned"]["passed"], checks["agrees/perplexity-pruned"]
    assert vllm["ppl"]["pruned"] == pytest.approx(expected, rel=5e-3)


@pytest.mark.slow
@pytest.mark.skipif(not OPENVINO_PYTHON.exists(), reason="the OpenVINO venv is missing (make setup-openvino)")
def test_openvino_scores_the_same_bos_windows_as_transformers(tmp_path, text_file) -> None:
    """Real engines: the OpenVINO runner (integrations/openvino/engine.py, StatefulLM.perplexity over its own
    windows of the exported IR) scores BOS windows like the core: its IR's perplexity is the torch model's (1e-3)."""
    openvino, expected = validate_bos_windows(tmp_path, text_file, "openvino", OPENVINO_PYTHON.parent.parent)
    checks = {c["name"]: c for c in openvino["checks"]}
    assert checks["agrees/perplexity"]["passed"], checks["agrees/perplexity"]
    assert openvino["ppl"]["pruned"] == pytest.approx(expected, rel=1e-3)
