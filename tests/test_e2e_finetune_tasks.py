"""Sentence pairs, regression and multi-label classification through the API with a real
worker: a tiny BERT (random weights, a WordPiece tokenizer trained here on the data) is
imported, fine-tuned on each task (in full, with LoRA and with AdaLoRA), learns (the last
validation score beats the first), and its export loads in transformers.pipeline with the
same answers as POST /v1/models/{id}/classify. Data: tests/data/en-{pairs,regression,
multilabel}.jsonl.gz (tests/data/build_tasks.py)."""

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.stack import Stack

pytestmark = pytest.mark.slow


def records(data_dir: Path, name: str) -> list[dict]:
    with gzip.open(data_dir / name, "rt") as f:
        return [json.loads(line) for line in f]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def base_model(pg_redis_stack: Stack, data_dir: Path, tmp_path_factory) -> str:
    """A 2-layer BERT of hidden size 64, random weights, imported as a fill-mask model."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    texts = [t for name in ("en-pairs.jsonl.gz", "en-regression.jsonl.gz",
                            "en-multilabel.jsonl.gz")
             for r in records(data_dir, name) for t in (r["text"], r.get("text_pair", ""))]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=2000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok.post_processor = processors.TemplateProcessing(  # BERT's single and pair formats
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("base") / "model"
    BertForMaskedLM(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=128, vocab_size=len(fast),
                               max_position_embeddings=256)).save_pretrained(out)
    fast.save_pretrained(out)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(out, arcname="model")
    r = pg_redis_stack.client.post("/v1/models/import",
                                   files={"file": ("bert.tar.gz", buf.getvalue())})
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


def finetune(stack: Stack, **spec) -> tuple[dict, list[dict]]:
    """The job's model and its evaluations, once it succeeded."""
    r = stack.client.post("/v1/jobs", json={"type": "finetune", **spec})
    assert r.status_code == 202, r.text
    job = stack.wait_job(r.json()["id"], timeout=900)
    assert job["status"] == "succeeded", (job, stack.logs())
    model = stack.client.get(f"/v1/models/{job['model_id']}").json()
    evals = [p for p in stack.client.get(f"/v1/jobs/{job['id']}/metrics").json()["data"]
             if "eval_loss" in p]
    return model, evals


def download(stack: Stack, model_id: str, tmp: Path) -> Path:
    r = stack.client.get(f"/v1/models/{model_id}/download")
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        tar.extractall(tmp, filter="data")
    return tmp / model_id


def same_scores(ours: list, theirs: list) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert [x["label"] for x in a] == [x["label"] for x in b]
        assert [x["score"] for x in a] == pytest.approx([x["score"] for x in b], abs=1e-4)


HYPER = {"batch_size": 32, "sequence_length": 128, "precision": "fp32"}


def test_sentence_pairs_learn_and_serve_as_the_pipeline(pg_redis_stack, base_model, data_dir,
                                                        tmp_path):
    from transformers import pipeline

    stack = pg_redis_stack
    rows = records(data_dir, "en-pairs.jsonl.gz")
    ds = stack.upload("pairs.jsonl", jsonl(rows)).json()
    assert ds["kind"] == "labelled_text" and ds["labels"] == ["longer", "shorter"]
    model, evals = finetune(stack, task="text_classification", base_model_id=base_model,
                            dataset_id=ds["id"], eval_every=50, hyperparameters={
                                **HYPER, "max_steps": 300, "learning_rate": 5e-4})
    print("pairs accuracy", evals[0]["accuracy"], "->", evals[-1]["accuracy"],
          "test", model["details"]["test"])
    assert evals[-1]["accuracy"] > evals[0]["accuracy"] + 0.1, evals
    assert model["task"] == "text-classification"
    local = pipeline("text-classification", model=str(download(stack, model["id"], tmp_path)))
    assert local.model.config.problem_type == "single_label_classification"
    test = [r for r in rows if r["split"] == "test"][:4]
    pairs = [{"text": r["text"], "text_pair": r["text_pair"]} for r in test]
    ours = stack.client.post(f"/v1/models/{model['id']}/classify", json={"inputs": pairs})
    assert ours.status_code == 200, ours.text
    same_scores(ours.json(), [local(p, top_k=None) for p in pairs])
    one = stack.client.post(f"/v1/models/{model['id']}/classify", json={"inputs": pairs[0]})
    same_scores(one.json(), [local(pairs[0], top_k=None)])
    # A pair missing its second text is the caller's mistake, named.
    r = stack.client.post(f"/v1/models/{model['id']}/classify",
                          json={"inputs": {"text": "a"}})
    assert r.status_code == 422 and r.json()["error"]["param"].startswith("inputs"), r.text


def test_regression_learns_and_serves_the_number(pg_redis_stack, base_model, data_dir,
                                                 tmp_path):
    from transformers import pipeline

    stack = pg_redis_stack
    rows = records(data_dir, "en-regression.jsonl.gz")
    ds = stack.upload("regression.jsonl", jsonl(rows)).json()
    assert ds["kind"] == "labelled_text"
    model, evals = finetune(stack, task="regression", base_model_id=base_model,
                            dataset_id=ds["id"], eval_every=25,
                            hyperparameters={**HYPER, "max_steps": 150, "learning_rate": 3e-3})
    print("regression pearson", evals[0]["pearson"], "->", evals[-1]["pearson"],
          "test", model["details"]["test"])
    assert evals[-1]["pearson"] > evals[0]["pearson"] + 0.05, evals
    assert {"mse", "pearson", "spearman"} <= set(model["details"]["test"])
    local = pipeline("text-classification", model=str(download(stack, model["id"], tmp_path)))
    assert local.model.config.problem_type == "regression"
    texts = [r["text"] for r in rows if r["split"] == "test"][:4]
    ours = stack.client.post(f"/v1/models/{model['id']}/classify", json={"inputs": texts}).json()
    assert [[x["label"] for x in a] for a in ours] == [["LABEL_0"]] * 4
    same_scores(ours, local(texts, top_k=None))
    # Labels that are not numbers: refused at submission, naming the dataset.
    words = stack.upload("words.jsonl", jsonl([{"text": "a b", "label": "x"},
                                               {"text": "c d", "label": "y"}])).json()
    r = stack.client.post("/v1/jobs", json={"type": "finetune", "task": "regression",
                                            "base_model_id": base_model,
                                            "dataset_id": words["id"]})
    assert r.status_code == 422 and r.json()["error"]["param"] == "dataset_id", r.text
    assert "number" in r.json()["error"]["message"]


def test_multi_label_learns_keeps_its_threshold_and_serves(pg_redis_stack, base_model, data_dir,
                                                           tmp_path):
    from transformers import pipeline

    stack = pg_redis_stack
    rows = records(data_dir, "en-multilabel.jsonl.gz")
    ds = stack.upload("multi.jsonl", jsonl(rows)).json()
    assert ds["kind"] == "multi_labelled_text"
    assert ds["labels"] == ["family", "government", "religion", "sea"]
    model, evals = finetune(stack, task="multi_label_classification", base_model_id=base_model,
                            dataset_id=ds["id"], eval_every=25,
                            hyperparameters={**HYPER, "max_steps": 150, "learning_rate": 3e-3})
    print("multi-label micro-F1", evals[0]["micro_f1"], "->", evals[-1]["micro_f1"],
          "test", model["details"]["test"])
    assert evals[-1]["micro_f1"] > evals[0]["micro_f1"] + 0.05, evals
    export = download(stack, model["id"], tmp_path)
    config = json.loads((export / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert config["cloze_threshold"] == model["details"]["test"]["threshold"]
    assert "multi_label_classification" in (export / "README.md").read_text()
    local = pipeline("text-classification", model=str(export))
    texts = [r["text"] for r in rows if r["split"] == "test"][:4]
    ours = stack.client.post(f"/v1/models/{model['id']}/classify", json={"inputs": texts}).json()
    same_scores(ours, local(texts, top_k=None))
    for answer in ours:
        assert len(answer) == 4
        assert all(x["on"] == (x["score"] >= config["cloze_threshold"]) for x in answer)


@pytest.mark.parametrize(("task", "name", "adapter"), [
    ("multi_label_classification", "en-multilabel.jsonl.gz", "adalora"),
    ("text_classification", "en-pairs.jsonl.gz", "adalora"),
    ("regression", "en-regression.jsonl.gz", "lora"),
])
def test_adapters_train_each_task_and_export_a_plain_model(pg_redis_stack, base_model, data_dir,
                                                           tmp_path, task, name, adapter):
    """LoRA and AdaLoRA (peft; AdaLoRA prunes its ranks over the run) on each task: a short
    run whose merged export answers as /classify does."""
    from transformers import pipeline

    stack = pg_redis_stack
    rows = records(data_dir, name)[:300]
    ds = stack.upload(f"{task}-small.jsonl", jsonl(rows)).json()
    model, _ = finetune(stack, task=task, base_model_id=base_model, dataset_id=ds["id"],
                        adapter={"type": adapter, "r": 4},
                        hyperparameters={**HYPER, "max_steps": 20, "learning_rate": 3e-3})
    assert model["details"]["adapter"]["type"] == adapter
    assert 0 < model["details"]["trainable_parameters"] < model["details"]["num_parameters"]
    local = pipeline("text-classification", model=str(download(stack, model["id"], tmp_path)))
    one = {"text": rows[0]["text"], "text_pair": rows[0]["text_pair"]} \
        if "text_pair" in rows[0] else rows[0]["text"]
    ours = stack.client.post(f"/v1/models/{model['id']}/classify", json={"inputs": one}).json()
    same_scores(ours, [local(one, top_k=None)])
