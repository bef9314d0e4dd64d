"""Fine-tuning through the API with a real worker: pretrain a tiny BERT, fine-tune it for
text classification and for tagging (also from an imported model, also with LoRA), check
the held-out metrics against trivial baselines, and check that our endpoints answer as
transformers' pipelines do on the downloaded exports."""

import collections
import gzip
import io
import json
import random
import tarfile
from pathlib import Path

import pytest

from tests.stack import Stack, corpus_slice

pytestmark = pytest.mark.slow


def spam_slice(data_dir: Path, per_split: dict[str, int]) -> bytes:
    """A seeded sample of the spam set (the file is ordered by source, ham first)."""
    with gzip.open(data_dir / "spamassassin-sample.jsonl.gz", "rt") as f:
        records = [json.loads(line) for line in f]
    random.Random(0).shuffle(records)
    taken: collections.Counter[str] = collections.Counter()
    lines = []
    for record in records:
        if taken[record["split"]] < per_split.get(record["split"], 0):
            taken[record["split"]] += 1
            record["text"] = record["text"][:1500]
            lines.append(json.dumps({k: record[k] for k in ("text", "label", "split")}))
    return ("\n".join(lines) + "\n").encode()


def conll_slice(path: Path, sentences: int) -> bytes:
    out, n = [], 0
    with gzip.open(path, "rt") as f:
        for line in f:
            out.append(line)
            if not line.strip():
                n += 1
                if n == sentences:
                    break
    return "".join(out).encode()


@pytest.fixture(scope="module")
def base_model(pg_redis_stack: Stack, data_dir) -> str:
    stack = pg_redis_stack
    corpus = corpus_slice(data_dir / "en-pretrain.txt.gz", 1_500_000)
    ds = stack.upload("base.txt", corpus).json()["id"]
    job = stack.client.post("/v1/jobs", json={
        "dataset_id": ds, "model": {"size": "tiny"}, "tokenizer": {"vocab_size": 3000},
        "hyperparameters": {"max_steps": 300, "batch_size": 32, "sequence_length": 64,
                            "learning_rate": 2e-3, "warmup_steps": 20},
        "eval_every": 100, "checkpoint_every": 300}).json()
    done = stack.wait_job(job["id"], timeout=900)
    assert done["status"] == "succeeded", done
    return done["model_id"]


def finetune(stack: Stack, **spec) -> dict:
    r = stack.client.post("/v1/jobs", json={"type": "finetune", **spec})
    assert r.status_code == 202, r.text
    job = stack.wait_job(r.json()["id"], timeout=900)
    assert job["status"] == "succeeded", (job, stack.logs())
    # The worker reports the step count it worked out from the data.
    assert job["progress"]["total_steps"] == job["progress"]["step"] > 0
    return job


def download(stack: Stack, model_id: str, tmp: Path) -> Path:
    r = stack.client.get(f"/v1/models/{model_id}/download")
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        tar.extractall(tmp, filter="data")
    return tmp / model_id


def test_text_classification_beats_the_majority_class(pg_redis_stack, base_model, data_dir,
                                                      tmp_path):
    from transformers import pipeline

    stack = pg_redis_stack
    ds = stack.upload("spam.jsonl", spam_slice(data_dir, {"train": 600, "valid": 150,
                                                          "test": 300})).json()
    assert ds["kind"] == "labelled_text" and ds["labels"] == ["ham", "spam"]
    job = finetune(stack, task="text_classification", base_model_id=base_model,
                   dataset_id=ds["id"], hyperparameters={
                       "epochs": 3, "batch_size": 16, "learning_rate": 1e-3,
                       "sequence_length": 128})
    model = stack.client.get(f"/v1/models/{job['model_id']}").json()
    assert model["task"] == "text-classification"
    test = model["details"]["test"]
    texts = [json.loads(line) for line in spam_slice(
        data_dir, {"test": 300}).decode().splitlines()]
    counts = collections.Counter(t["label"] for t in texts)
    majority = max(counts.values()) / len(texts)
    assert test["accuracy"] > majority + 0.02, (test, majority)
    evals = [p for p in stack.client.get(f"/v1/jobs/{job['id']}/metrics").json()["data"]
             if "eval_loss" in p]
    assert evals and "f1" in evals[-1]
    # the endpoint answers as the pipeline on the export does
    local = pipeline("text-classification", model=str(download(stack, model["id"], tmp_path)))
    sample = [t["text"][:300] for t in texts[:4]]
    ours = stack.client.post(f"/v1/models/{model['id']}/classify", json={"inputs": sample}).json()
    theirs = local(sample, top_k=None)
    assert [[a["label"] for a in x] for x in ours] == [[a["label"] for a in x] for x in theirs]


def test_tagging_beats_the_most_common_tag(pg_redis_stack, base_model, data_dir, tmp_path):
    from transformers import pipeline

    stack = pg_redis_stack
    pos = data_dir
    train = stack.upload("train.conll", conll_slice(pos / "brown-train.conll.gz", 1500)).json()
    valid = stack.upload("valid.conll", conll_slice(pos / "brown-valid.conll.gz", 200)).json()
    test_bytes = conll_slice(pos / "brown-test.conll.gz", 300)
    test = stack.upload("test.conll", test_bytes).json()
    assert train["kind"] == "tagged_tokens"
    job = finetune(stack, task="token_classification", base_model_id=base_model,
                   dataset_id=train["id"], validation_dataset_id=valid["id"],
                   test_dataset_id=test["id"], labels=sorted(
                       set(train["labels"]) | set(valid["labels"]) | set(test["labels"])),
                   hyperparameters={"epochs": 3, "batch_size": 16, "learning_rate": 2e-3,
                                    "sequence_length": 64})
    model = stack.client.get(f"/v1/models/{job['model_id']}").json()
    assert model["task"] == "token-classification"
    tags = [line.split("\t")[1] for line in test_bytes.decode().splitlines()
            if line.strip() and not line.startswith("#")]
    most_common = collections.Counter(tags).most_common(1)[0][1] / len(tags)
    assert model["details"]["test"]["accuracy"] > most_common + 0.1, model["details"]["test"]
    local = pipeline("token-classification", model=str(download(stack, model["id"], tmp_path)),
                     aggregation_strategy="simple")
    text = "The jury said the election was conducted well ."
    ours = stack.client.post(f"/v1/models/{model['id']}/token-classification",
                             json={"inputs": text}).json()
    assert [(e["entity_group"], e["start"], e["end"]) for e in ours] == \
        [(e["entity_group"], e["start"], e["end"]) for e in local(text)]


def test_imported_model_fine_tunes_with_lora_and_serves(pg_redis_stack, base_model, data_dir,
                                                        tmp_path):
    from transformers import AutoModelForSequenceClassification

    stack = pg_redis_stack
    archive = stack.client.get(f"/v1/models/{base_model}/download").content
    imported = stack.client.post("/v1/models/import",
                                 files={"file": ("bert.tar.gz", archive)}).json()
    assert imported["task"] == "fill-mask" and imported["job_id"] is None
    ds = stack.upload("s.jsonl", spam_slice(data_dir, {"train": 300, "test": 100})).json()
    job = finetune(stack, task="text_classification", base_model_id=imported["id"],
                   dataset_id=ds["id"], adapter={"type": "lora", "r": 8},
                   hyperparameters={"epochs": 2, "batch_size": 16, "learning_rate": 3e-3,
                                    "sequence_length": 128})
    model = stack.client.get(f"/v1/models/{job['model_id']}").json()
    assert model["details"]["trainable_parameters"] < model["details"]["num_parameters"] / 2
    export = download(stack, model["id"], tmp_path)
    AutoModelForSequenceClassification.from_pretrained(export)  # merged: plain transformers
    r = stack.client.post(f"/v1/models/{model['id']}/classify", json={"inputs": "win money"})
    assert r.status_code == 200 and r.json()[0][0]["label"] in {"spam", "ham"}


def test_label_sets_that_do_not_match_are_refused(pg_redis_stack, base_model, data_dir):
    stack = pg_redis_stack
    ds = stack.upload("l.jsonl", spam_slice(data_dir, {"train": 20})).json()
    r = stack.client.post("/v1/jobs", json={"type": "finetune", "task": "text_classification",
                                            "base_model_id": base_model, "dataset_id": ds["id"],
                                            "labels": ["spam", "eggs"]})
    assert r.status_code == 422 and r.json()["error"]["param"] == "labels"
    assert "ham" in r.json()["error"]["message"]
    r = stack.client.post("/v1/jobs", json={"type": "finetune", "task": "token_classification",
                                            "base_model_id": base_model, "dataset_id": ds["id"]})
    assert r.status_code == 422 and r.json()["error"]["param"] == "dataset_id"


def conll2003_like(sentences: int, seed: int) -> bytes:
    """A CoNLL-2003-shaped file: token, POS, chunk and NER columns, -DOCSTART- lines."""
    rng = random.Random(seed)
    people = ["Alice", "Bob", "Carol", "Dmitri", "Esther", "Farouk", "Grace", "Hiro"]
    places = ["Paris", "Lagos", "Oslo", "Lima", "Kyoto", "Quebec", "Hanoi", "Turin"]
    orgs = [["Acme", "Corp"], ["United", "Nations"], ["Red", "Cross"], ["Blue", "Bank"]]
    lines = ["-DOCSTART- -X- -X- O", ""]
    for i in range(sentences):
        org = rng.choice(orgs)
        words = [(rng.choice(people), "NNP", "B-NP", "B-PER"), ("visited", "VBD", "B-VP", "O"),
                 (rng.choice(places), "NNP", "B-NP", "B-LOC"), ("for", "IN", "B-PP", "O"),
                 (org[0], "NNP", "B-NP", "B-ORG"), (org[1], "NNP", "I-NP", "I-ORG"),
                 (".", ".", "O", "O")]
        if rng.random() < 0.5:
            words = words[2:3] + [("is", "VBZ", "B-VP", "O"), ("far", "RB", "B-ADVP", "O"),
                                  (".", ".", "O", "O")]
        lines += [" ".join(w) for w in words] + [""]
        if i % 50 == 49:
            lines += ["-DOCSTART- -X- -X- O", ""]
    return "\n".join(lines).encode()


def test_ner_columns_file_named_txt_trains_on_the_ner_tags(pg_redis_stack, base_model):
    """A standard NER corpus as people have it (four columns, train.txt): detected by its
    content, the NER column chosen, and the model learns entities, not POS."""
    stack = pg_redis_stack
    ds = stack.upload("train.txt", conll2003_like(400, seed=0)).json()
    assert ds["kind"] == "tagged_tokens" and ds["format"] == "conll"
    assert ds["columns"] == 4 and ds["tag_column"] == 3
    assert set(ds["labels"]) == {"O", "B-PER", "B-LOC", "B-ORG", "I-ORG"}
    test = stack.upload("test.txt", conll2003_like(100, seed=1)).json()
    job = finetune(stack, task="token_classification", base_model_id=base_model,
                   dataset_id=ds["id"], test_dataset_id=test["id"],
                   hyperparameters={"epochs": 3, "batch_size": 16, "learning_rate": 2e-3,
                                    "sequence_length": 32})
    model = stack.client.get(f"/v1/models/{job['model_id']}").json()
    assert set(model["details"]["labels"]) == set(ds["labels"])
    scores = model["details"]["test"]
    assert {"precision", "recall", "f1"} <= set(scores) and scores["f1"] > 0.5, scores
    found = stack.client.post(f"/v1/models/{model['id']}/token-classification",
                              json={"inputs": "Grace visited Oslo for Acme Corp ."}).json()
    assert {e["entity_group"] for e in found} & {"PER", "LOC", "ORG"}
