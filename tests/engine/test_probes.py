"""Cloze probes: scored at every eval, stored with the eval point, shown in the model card;
a masked model's probe needs exactly one blank; a causal model's continuation is scored
whole."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jobspec import PretrainSpec, parse_spec
from jobspec.common import SpecError
from jobspec.pretrain import Probe
from tests.inference_helpers import gpt2
from workers.engine import run_pretraining
from workers.engine.probes import run_probes

PROBES = [{"text": "the united [MASK] of america", "expected": "states"},
          {"text": "the president of the united states shall from time to time give to "
                   "the [MASK] information of the state of the union",
           "expected": "congress"}]


@pytest.mark.slow
def test_probes_are_scored_at_every_eval_and_shown_in_the_card(en_data, tmp_path,
                                                               make_reporter, make_spec):
    spec = parse_spec({**make_spec(), "probes": PROBES})
    assert isinstance(spec, PretrainSpec)
    reporter = make_reporter()
    result = run_pretraining(spec, str(en_data), str(tmp_path), reporter, device="cpu")
    assert [e["step"] for e in reporter.evals] == [10, 20, 30, 40, 50]
    for point in reporter.evals:
        assert [p["expected"] for p in point["probes"]] == ["states", "congress"]
        for probe in point["probes"]:
            assert probe["rank"] >= 1 and 0.0 <= probe["probability"] <= 1.0
            assert len(probe["top"]) == 5
            assert probe["top"][0]["probability"] >= probe["probability"]
    ranks = [e["probes"][0]["rank"] for e in reporter.evals]
    print("\nstep  rank of 'states' in 'the united [MASK] of america'")
    for point, rank in zip(reporter.evals, ranks, strict=True):
        print(f"{point['step']:>4}  {rank:>5}  p={point['probes'][0]['probability']:.4f}  "
              f"top: {', '.join(t['token'] for t in point['probes'][0]['top'])}")
    card = (Path(result.export_dir) / "README.md").read_text()
    assert "| the united [MASK] of america | states |" in card


def test_a_masked_model_probe_needs_one_blank(make_spec):
    for text in ("no blank here", "two [MASK] and <mask>"):
        with pytest.raises(SpecError) as refused:
            parse_spec({**make_spec(), "probes": [{"text": text, "expected": "x"}]})
        assert refused.value.param == "probes.0.text"
    # A causal model's probe is a prompt: no blank.
    parse_spec({**make_spec(architecture="gpt2"),
                "probes": [{"text": "the united states of", "expected": "america"}]})


def test_a_causal_probe_scores_the_whole_continuation(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = gpt2(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    tok = AutoTokenizer.from_pretrained(directory)
    probe = Probe(text="the quick brown", expected="fox jumps")
    [answer] = run_probes(model, tok, [probe], causal=True, device=torch.device("cpu"))
    # This tokenizer appends [SEP]; the prompt is read without it.
    prompt = tok("the quick brown")["input_ids"][:-1]
    whole = tok("the quick brown fox jumps")["input_ids"][:-1]
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0]
    expected = 1.0
    for k in range(len(prompt), len(whole)):
        expected *= float(logits[k - 1].softmax(-1)[whole[k]])
    assert abs(answer["probability"] - expected) < 1e-6
    first = logits[len(prompt) - 1].softmax(-1)
    assert answer["rank"] == int((first > first[whole[len(prompt)]]).sum()) + 1
