"""Every objective and architecture on the one loop: the held-out loss falls, English and
Chinese, and the export loads in the transformers pipeline of its task with no code of ours."""

from __future__ import annotations

import unicodedata

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from jobspec import parse_spec
from workers.engine import prepare_data, run_pretraining

pytestmark = pytest.mark.slow

CASES = {
    "gpt2-bpe-clm": {"architecture": "gpt2"},
    "llama-unigram-clm": {"architecture": "llama"},
    "roberta-bpe-mlm": {"architecture": "roberta"},
    "bert-wordpiece-mlm_nsp": {"objective": "mlm_nsp"},
}


def _train(corpus, tmp_path, make_spec, make_reporter, **kwargs):
    spec = parse_spec(make_spec(**kwargs))
    reporter = make_reporter()
    prepare_data(spec, str(corpus), "txt", str(tmp_path / "data"), reporter)
    result = run_pretraining(spec, str(tmp_path / "data"), str(tmp_path / "run"), reporter)
    assert not result.stopped and result.steps == 50
    first, last = reporter.evals[0]["eval_loss"], reporter.evals[-1]["eval_loss"]
    assert last < first - 0.3, (first, last)
    return spec, result, reporter


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_objective_learns_english_and_exports(en_corpus, tmp_path, make_spec, make_reporter,
                                              case):
    spec, result, reporter = _train(en_corpus, tmp_path, make_spec, make_reporter, **case)
    export = result.export_dir
    if spec.objective == "clm":
        generate = pipeline("text-generation", model=export, device="cpu")
        out = generate("The king said", max_new_tokens=8, do_sample=False)
        assert out[0]["generated_text"].startswith("The king said")
        # greedy decoding by hand with the model alone picks the pipeline's tokens
        tok = AutoTokenizer.from_pretrained(export)
        model = AutoModelForCausalLM.from_pretrained(export)
        ids = tok("The king said", return_tensors="pt")["input_ids"]
        prompt = ids.shape[1]
        with torch.no_grad():
            for _ in range(8):
                ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
        tokens = generate("The king said", max_new_tokens=8, do_sample=False,
                          return_tensors=True)[0]["generated_token_ids"]
        assert list(tokens) == ids[0].tolist()
        # transformers 5 decodes the new tokens alone and appends them to the prompt
        assert out[0]["generated_text"] == "The king said" + tok.decode(ids[0, prompt:])
    else:
        tok = AutoTokenizer.from_pretrained(export)
        fill = pipeline("fill-mask", model=export, device="cpu")
        answers = fill(f"the {tok.mask_token} of the lord.")
        assert len(answers) == 5 and all(a["token_str"] for a in answers)
    if spec.objective == "mlm_nsp":
        last = reporter.evals[-1]
        assert {"mlm_loss", "nsp_loss", "nsp_accuracy"} <= set(last)
        assert last["eval_loss"] == pytest.approx(last["mlm_loss"] + last["nsp_loss"])
        first = reporter.evals[0]
        assert last["nsp_loss"] < first["nsp_loss"] or last["nsp_accuracy"] > 0.5


@pytest.mark.parametrize("architecture", ["llama", "roberta"])
def test_chinese(zh_corpus, tmp_path, make_spec, make_reporter, architecture):
    spec, result, _ = _train(zh_corpus, tmp_path, make_spec, make_reporter,
                             architecture=architecture)
    tok = AutoTokenizer.from_pretrained(result.export_dir)
    text = zh_corpus.read_text(encoding="utf-8").splitlines()[3][:30]  # seen characters
    ids = tok(text)["input_ids"]
    assert tok.unk_token_id not in ids
    decoded = tok.decode(ids, skip_special_tokens=True).replace(" ", "")
    if architecture == "llama":  # unigram normalises with NFKC; byte-level BPE is lossless
        text = unicodedata.normalize("NFKC", text)
    assert decoded == text.replace(" ", "")


def test_continued_pretraining_starts_where_the_base_stands(en_corpus, tmp_path,
                                                            make_spec, make_reporter):
    _, base, base_reporter = _train(en_corpus, tmp_path / "base", make_spec, make_reporter,
                                    architecture="gpt2")
    raw = make_spec(architecture="gpt2", max_steps=30)
    raw.update(base_model_id="m_base", tokenizer={"type": "from_model"})
    spec = parse_spec(raw)
    reporter = make_reporter()
    data = tmp_path / "data"
    prepare_data(spec, str(en_corpus), "txt", str(data), reporter, base.export_dir)
    result = run_pretraining(spec, str(data), str(tmp_path / "run"), reporter,
                             base_model_dir=base.export_dir)
    assert any("continuing the base model" in m for _, m in reporter.events)
    # The first eval, before any step, is where the base model stands: the same tokenizer
    # cuts the same held-out blocks, so it equals the base run's last eval.
    assert reporter.evals[0]["step"] == 0
    assert reporter.evals[0]["eval_loss"] == pytest.approx(base_reporter.evals[-1]["eval_loss"],
                                                           abs=1e-4)
    assert reporter.evals[-1]["eval_loss"] <= reporter.evals[0]["eval_loss"]
    assert AutoTokenizer.from_pretrained(result.export_dir).get_vocab() == \
        AutoTokenizer.from_pretrained(base.export_dir).get_vocab()
