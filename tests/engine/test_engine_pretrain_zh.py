"""End-to-end on a Chinese slice: one token per character, the loss falls, fill-mask answers."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer, pipeline

from workers.engine import prepare_data, run_pretraining

pytestmark = pytest.mark.slow


def test_chinese_run(zh_corpus, tmp_path, reporter, make_config):
    config = make_config()
    prepare_data(config, str(zh_corpus), "txt", str(tmp_path / "data"), reporter)
    result = run_pretraining(config, str(tmp_path / "data"), str(tmp_path / "run"), reporter)
    assert not result.stopped and result.steps == 50

    tok = AutoTokenizer.from_pretrained(result.export_dir)
    assert len(tok.tokenize("我爱北京")) == 4
    assert tok.tokenize("中国") == ["中", "国"]

    first, last = reporter.evals[0]["eval_loss"], reporter.evals[-1]["eval_loss"]
    assert last < first - 0.3, (first, last)

    answers = pipeline("fill-mask", model=result.export_dir, device="cpu")("北京是中国的[MASK]都")
    assert len(answers) == 5 and all(a["token_str"] for a in answers)
