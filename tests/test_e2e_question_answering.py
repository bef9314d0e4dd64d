"""Extractive question answering through the API with a real worker: a tiny BERT pretrained
here is fine-tuned on the Brown QA set the tests carry (tests/data/README.md), learns
(validation F1 above its first evaluation's), and its endpoint answers in the Hugging Face
Inference API format as the downloaded export does when read directly with transformers; the
same questions uploaded as SQuAD 2.0's train and dev files fine-tune too."""

import gzip
import json

import numpy as np
import pytest

from tests.stack import Stack, corpus_slice
from tests.test_question_answering import brown_qa, squad_document

pytestmark = pytest.mark.slow


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


def reference(export, question: str, context: str) -> dict:
    """The best answer as transformers 4.57's question-answering pipeline computes it, for a
    context that fits one window: softmax of start and end logits over the context's tokens
    and [CLS]; the 12 best start x end products (start <= end, at most 15 tokens), each
    widened to whole words, the scores of spans that give the same answer summed."""
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(export)
    model = AutoModelForQuestionAnswering.from_pretrained(export).eval()
    enc = tokenizer(question, context, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc)
    allowed = np.array([s == 1 for s in enc.sequence_ids(0)])
    allowed[0] = True
    probs = []
    for logits in (out.start_logits[0].numpy(), out.end_logits[0].numpy()):
        x = np.where(allowed, logits, -10000.0)
        e = np.exp(x - x.max())
        p = e / e.sum()
        p[0] = 0.0
        probs.append(p)
    scores = np.tril(np.triu(np.outer(*probs)), 14)
    words = enc.encodings[0]
    answers: dict[str, dict] = {}
    for flat in np.argsort(-scores.ravel(), kind="stable")[:12]:
        s, e = np.unravel_index(flat, scores.shape)
        if not (allowed[s] and allowed[e]):
            continue
        start = words.word_to_chars(words.token_to_word(s), sequence_index=1)[0]
        end = words.word_to_chars(words.token_to_word(e), sequence_index=1)[1]
        text = context[start:end]
        if text.lower() in answers:
            answers[text.lower()]["score"] += float(scores[s, e])
        else:
            answers[text.lower()] = {"answer": text, "score": float(scores[s, e]),
                                     "start": start, "end": end}
    return max(answers.values(), key=lambda a: a["score"])


def test_question_answering_learns_and_serves(pg_redis_stack, base_model, data_dir,
                                              tmp_path):
    stack = pg_redis_stack
    raw = gzip.decompress((data_dir / "brown-qa.jsonl.gz").read_bytes())
    ds = stack.upload("brown-qa.jsonl", raw).json()
    assert ds["kind"] == "extractive_qa", ds
    r = stack.client.post("/v1/jobs", json={
        "type": "finetune", "task": "question_answering", "base_model_id": base_model,
        "dataset_id": ds["id"], "labels": ["a", "b"]})
    assert r.status_code == 422 and r.json()["error"]["param"] == "labels"
    r = stack.client.post("/v1/jobs", json={
        "type": "finetune", "task": "question_answering", "base_model_id": base_model,
        "dataset_id": ds["id"], "eval_every": 100, "log_every": 50,
        "hyperparameters": {"max_steps": 600, "batch_size": 16, "learning_rate": 1e-3,
                            "sequence_length": 128}})
    assert r.status_code == 202, r.text
    job = stack.wait_job(r.json()["id"], timeout=1200)
    assert job["status"] == "succeeded", (job, stack.logs())
    evals = [p for p in stack.client.get(f"/v1/jobs/{job['id']}/metrics").json()["data"]
             if "eval_loss" in p]
    assert len(evals) >= 3 and {"exact_match", "f1"} <= set(evals[0])
    print("validation F1", [round(p["f1"], 4) for p in evals],
          "EM", [round(p["exact_match"], 4) for p in evals])
    assert evals[-1]["f1"] > evals[0]["f1"], evals
    model = stack.client.get(f"/v1/models/{job['model_id']}").json()
    assert model["task"] == "question-answering"
    print("test", model["details"]["test"])
    assert {"exact_match", "f1"} <= set(model["details"]["test"])

    url = f"/v1/models/{model['id']}/question-answering"
    records = [json.loads(line) for line in raw.decode().splitlines()
               if json.loads(line)["split"] == "test"][:4]
    export = stack.download(model["id"], tmp_path)
    for record in records:
        item = {"question": record["question"], "context": record["context"]}
        ours = stack.client.post(url, json={"inputs": item})
        assert ours.status_code == 200, ours.text
        answer = ours.json()
        assert set(answer) == {"answer", "score", "start", "end"}
        theirs = reference(str(export), record["question"], record["context"])
        assert (answer["answer"], answer["start"], answer["end"]) == \
            (theirs["answer"], theirs["start"], theirs["end"])
        assert answer["score"] == pytest.approx(theirs["score"], rel=1e-4)
        assert record["context"][answer["start"]:answer["end"]] == answer["answer"]
    # A list of inputs: a list of answers; top_k > 1: a list, best first.
    items = [{"question": r["question"], "context": r["context"]} for r in records[:2]]
    several = stack.client.post(url, json={"inputs": items}).json()
    assert isinstance(several, list) and len(several) == 2
    top = stack.client.post(url, json={"inputs": items[0], "parameters": {"top_k": 3}}).json()
    assert len(top) == 3 and top[0] == several[0]
    assert top[0]["score"] >= top[1]["score"] >= top[2]["score"]
    null = stack.client.post(url, json={"inputs": items[0], "parameters": {
        "top_k": 50, "handle_impossible_answer": True}}).json()
    assert {"answer": "", "start": 0, "end": 0} in [
        {k: a[k] for k in ("answer", "start", "end")} for a in null]
    # A context longer than the window is read in windows; the answer lies in the context.
    long_context = " ".join(r["context"] for r in records) * 3
    long = stack.client.post(url, json={"inputs": {"question": records[0]["question"],
                                                   "context": long_context}}).json()
    assert long_context[long["start"]:long["end"]] == long["answer"]
    # Bad requests: the parameter named.
    for body, param in (({"inputs": {"question": "q"}}, None),
                        ({"inputs": items[0], "parameters": {"doc_stride": 500}},
                         "parameters.doc_stride"),
                        ({"inputs": items[0], "parameters": {"max_seq_len": 100_000}},
                         "parameters.max_seq_len"),
                        ({"inputs": items[0], "parameters": {"top_k": 10_000}},
                         "parameters.top_k")):
        r = stack.client.post(url, json=body)
        assert r.status_code == 422, r.text
        if param:
            assert r.json()["error"]["param"] == param, r.text
    # Another task's route names this one.
    r = stack.client.post(f"/v1/models/{model['id']}/classify", json={"inputs": "x"})
    assert r.status_code == 422 and "question-answering" in r.json()["error"]["message"]


def test_squad_files_fine_tune(pg_redis_stack, base_model, data_dir):
    """train-v2.0.json.gz and dev-v2.0.json as SQuAD ships them: a short run reads both (its
    validation set is the dev file's questions) and evaluates with SQuAD's scores."""
    stack = pg_redis_stack
    files = {}
    for name, split, n in (("train-v2.0.json.gz", "train", 400), ("dev-v2.0.json", "valid", 50)):
        document = json.dumps(squad_document(brown_qa(data_dir, split, n))).encode()
        ds = stack.upload(name, gzip.compress(document) if name.endswith(".gz") else document)
        assert ds.status_code == 201, ds.text
        assert (ds.json()["kind"], ds.json()["documents"]) == ("extractive_qa", n), ds.json()
        files[split] = ds.json()["id"]
    r = stack.client.post("/v1/jobs", json={
        "type": "finetune", "task": "question_answering", "base_model_id": base_model,
        "dataset_id": files["train"], "validation_dataset_id": files["valid"],
        "eval_every": 15, "log_every": 5,
        "hyperparameters": {"max_steps": 30, "batch_size": 16, "learning_rate": 1e-3,
                            "sequence_length": 128}})
    assert r.status_code == 202, r.text
    job = stack.wait_job(r.json()["id"], timeout=600)
    assert job["status"] == "succeeded", (job, stack.logs())
    evals = [p for p in stack.client.get(f"/v1/jobs/{job['id']}/metrics").json()["data"]
             if "eval_loss" in p]
    assert len(evals) >= 2 and all({"exact_match", "f1"} <= set(p) for p in evals), evals
    model = stack.client.get(f"/v1/models/{job['model_id']}").json()
    assert model["task"] == "question-answering"
