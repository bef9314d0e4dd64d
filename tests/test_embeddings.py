"""Models as the Hub ships them (base models without a head, the sentence-transformers
layout, a BERT with only vocab.txt) imported and serving embeddings through the HTTP API,
checked against sentence-transformers and transformers in-process and through real clients
(huggingface_hub's InferenceClient, the openai package)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.test_import_and_serving import archive, import_, tokenizer_dir  # noqa: F401

TEXTS = ["the quick brown fox jumps over the lazy dog", "paris france",
         "the dog in paris", "quick quick quick brown"]
SMALL = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
         "intermediate_size": 64}


def base_bert(tmp: Path, tokenizer_dir: Path, name: str) -> Path:  # noqa: F811
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(1)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    out = tmp / name
    BertModel(BertConfig(**SMALL, vocab_size=len(tokenizer))).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def sentence_transformers_dir(tmp: Path, tokenizer_dir: Path, *, modes: dict[str, bool],  # noqa: F811
                              normalize: bool, max_seq_length: int | None,
                              prompts: dict[str, str] | None = None) -> Path:
    """A base BERT in the sentence-transformers layout, as the Hub ships all-MiniLM-L6-v2."""
    out = base_bert(tmp, tokenizer_dir, "st-" + "-".join(k for k, v in modes.items() if v))
    modules = [{"idx": 0, "name": "0", "path": "",
                "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling"}]
    if normalize:  # no folder: the Hub's has none either
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    (out / "modules.json").write_text(json.dumps(modules))
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, **{f"pooling_mode_{k}": v for k, v in modes.items()}}))
    if max_seq_length:
        (out / "sentence_bert_config.json").write_text(json.dumps(
            {"max_seq_length": max_seq_length, "do_lower_case": False}))
    (out / "config_sentence_transformers.json").write_text(json.dumps(
        {"__version__": {"sentence_transformers": "2.0.0"}, "prompts": prompts or {}}))
    return out


def reference(directory: Path, texts: list[str], *, normalize: bool = False) -> np.ndarray:
    """Mean pooling of AutoModel's last hidden states, one text at a time (no padding)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    rows = []
    with torch.no_grad():
        for text in texts:
            hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
            rows.append(hidden.mean(dim=0))
    out = torch.stack(rows)
    return (torch.nn.functional.normalize(out, dim=-1) if normalize else out).numpy()


def post(stack, url, body):
    r = stack.client.post(url, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_sentence_transformers_layout_serves_its_pooling(embedded_stack, tokenizer_dir,  # noqa: F811
                                                         tmp_path):
    """A sentence-transformers BERT (architectures ["BertModel"], mean pooling, Normalize,
    a max_seq_length) imports as feature-extraction and embeds as SentenceTransformer does,
    over three wire formats and two real clients."""
    from huggingface_hub import InferenceClient
    from openai import NotFoundError, OpenAI
    from sentence_transformers import SentenceTransformer

    stack = embedded_stack
    directory = sentence_transformers_dir(
        tmp_path, tokenizer_dir, modes={"mean_tokens": True, "cls_token": False},
        normalize=True, max_seq_length=6, prompts={"query": "query: "})
    (directory / "pytorch_model.bin").write_bytes(b"a pickle the Hub ships beside it")
    (directory / "train_script.py").write_text("import os\n")
    r = import_(stack, archive(directory))
    assert r.status_code == 201, r.text
    model = r.json()
    assert model["task"] == "feature-extraction" and model["architecture"] == "bert"
    assert model["details"]["pooling"]["modes"] == ["mean"]
    assert model["details"]["pooling"]["normalize"] is True
    assert model["details"]["pooling"]["max_seq_length"] == 6
    assert sorted(model["details"]["skipped_files"]) == ["pytorch_model.bin", "train_script.py"]
    # the skipped files were never stored: the download holds none of them
    import io
    import tarfile

    download = stack.client.get(f"/v1/models/{model['id']}/download")
    with tarfile.open(fileobj=io.BytesIO(download.content)) as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert "pytorch_model.bin" not in names and "train_script.py" not in names
    assert "modules.json" in names

    st = SentenceTransformer(str(directory), device="cpu")
    assert st.max_seq_length == 6  # the texts are longer: both cut them
    want = st.encode(TEXTS, convert_to_numpy=True)
    url = f"/v1/models/{model['id']}"
    ours = np.array(post(stack, f"{url}/feature-extraction", {"inputs": TEXTS}))
    assert ours.shape == want.shape and np.abs(ours - want).max() < 1e-5
    one = post(stack, f"{url}/feature-extraction", {"inputs": TEXTS[0]})
    assert len(one) == 1 and np.abs(np.array(one[0]) - want[0]).max() < 1e-5
    raw = np.array(post(stack, f"{url}/feature-extraction",
                        {"inputs": TEXTS, "normalize": False}))
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    assert np.abs(raw / np.linalg.norm(raw, axis=1, keepdims=True) - want).max() < 1e-5
    # truncate=false refuses a text longer than max_seq_length instead of cutting it
    r = stack.client.post(f"{url}/feature-extraction",
                          json={"inputs": TEXTS[0], "truncate": False})
    assert r.status_code == 413 and "6" in r.json()["error"]["message"], r.text
    # named prompts as sentence-transformers applies them
    query = post(stack, f"{url}/feature-extraction",
                 {"inputs": ["the dog"], "prompt_name": "query"})
    assert np.abs(np.array(query) - st.encode(["the dog"], prompt_name="query")).max() < 1e-5
    r = stack.client.post(f"{url}/feature-extraction", json={"inputs": "x", "prompt_name": "no"})
    assert r.status_code == 422 and "query" in r.json()["error"]["message"]

    hf = InferenceClient(model=f"{stack.url}{url}/feature-extraction")
    assert np.abs(hf.feature_extraction(TEXTS[1]) - want[1:2]).max() < 1e-5

    # sentence-similarity: cosine of the source with each sentence
    scores = post(stack, f"{url}/sentence-similarity", {"inputs": {
        "source_sentence": TEXTS[0], "sentences": TEXTS[1:]}})
    assert np.abs(np.array(scores) - want[1:] @ want[0]).max() < 1e-5
    similar = InferenceClient(model=f"{stack.url}{url}/sentence-similarity")
    assert np.abs(np.array(similar.sentence_similarity(TEXTS[0], TEXTS[1:])) - scores).max() < 1e-6

    # OpenAI's /v1/embeddings through the openai client (base64 by default) and as floats
    client = OpenAI(base_url=f"{stack.url}/v1", api_key="unused-on-loopback")
    got = client.embeddings.create(model=model["id"], input=TEXTS)
    assert [d.index for d in got.data] == list(range(len(TEXTS)))
    assert np.abs(np.array([d.embedding for d in got.data]) - want).max() < 1e-5
    read = sum(min(6, len(st.tokenizer(text)["input_ids"])) for text in TEXTS)  # cut to 6
    assert got.usage.prompt_tokens == got.usage.total_tokens == read
    floats = post(stack, "/v1/embeddings", {"model": model["id"], "input": TEXTS[2],
                                            "encoding_format": "float"})
    assert floats["object"] == "list" and floats["model"] == model["id"]
    assert np.abs(np.array(floats["data"][0]["embedding"]) - want[2]).max() < 1e-5
    short = client.embeddings.create(model=model["id"], input=TEXTS[2], dimensions=8)
    vector = np.array(short.data[0].embedding)
    assert vector.shape == (8,) and abs(np.linalg.norm(vector) - 1) < 1e-5
    ids = st.tokenizer(TEXTS[3], add_special_tokens=False)["input_ids"]
    by_ids = client.embeddings.create(model=model["id"], input=[ids])
    assert np.abs(np.array(by_ids.data[0].embedding) - want[3]).max() < 1e-5
    with pytest.raises(NotFoundError):
        client.embeddings.create(model="m_nope", input="x")


def test_base_models_and_models_with_heads_serve_mean_pooling(embedded_stack, tokenizer_dir,  # noqa: F811
                                                              tmp_path):
    """A base BERT, a base GPT-2 and a BERT with only vocab.txt import as shipped; they and
    a classifier (a model with a head) embed by mean pooling, as the reference does."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    from tests.test_import_and_serving import hf_model

    stack = embedded_stack
    bert = base_bert(tmp_path, tokenizer_dir, "bert")
    torch.manual_seed(2)
    gpt2 = tmp_path / "gpt2"
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=64,
                         vocab_size=len(tokenizer))).save_pretrained(gpt2)
    tokenizer.save_pretrained(gpt2)
    vocab_only = base_bert(tmp_path, tokenizer_dir, "vocab-only")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (vocab_only / name).unlink(missing_ok=True)
    by_id = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    (vocab_only / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in by_id))
    classifier = hf_model(tmp_path, tokenizer_dir, "classify")
    for directory, task in ((bert, "feature-extraction"), (gpt2, "feature-extraction"),
                            (vocab_only, "feature-extraction"),
                            (classifier, "text-classification")):
        r = import_(stack, archive(directory))
        assert r.status_code == 201, r.text
        model = r.json()
        assert model["task"] == task, model
        if directory is vocab_only:  # the WordPiece tokenizer BERT's vocab.txt describes
            reference_dir = tmp_path / "vocab-only-ref"
            shutil.copytree(vocab_only, reference_dir)
            BertWordPieceTokenizer(str(vocab_only / "vocab.txt"), lowercase=True).save(
                str(reference_dir / "tokenizer.json"))
            want = reference(reference_dir, TEXTS)
        else:
            want = reference(directory, TEXTS)
        ours = np.array(post(stack, f"/v1/models/{model['id']}/feature-extraction",
                             {"inputs": TEXTS}))
        assert np.abs(ours - want).max() < 1e-5, directory.name
    # the classifier still classifies
    r = stack.client.post(f"/v1/models/{model['id']}/classify", json={"inputs": TEXTS[0]})
    assert r.status_code == 200 and {a["label"] for a in r.json()[0]} == {"ham", "spam"}


def test_bad_models_and_bad_embedding_requests_are_4xx(embedded_stack, tokenizer_dir,  # noqa: F811
                                                       tmp_path):
    stack = embedded_stack
    bert = base_bert(tmp_path, tokenizer_dir, "bert")
    # no weights: only a pickle, which is never imported
    no_weights = tmp_path / "no-weights"
    shutil.copytree(bert, no_weights)
    (no_weights / "model.safetensors").rename(no_weights / "pytorch_model.bin")
    r = import_(stack, archive(no_weights))
    assert r.status_code == 422 and "pytorch_model.bin" in r.json()["error"]["message"]
    assert "safetensors" in r.json()["error"]["message"]
    # a tokenizer whose ids exceed the model's vocabulary
    big = tmp_path / "big-vocab"
    shutil.copytree(bert, big)
    size = json.loads((big / "config.json").read_text())["vocab_size"]
    data = json.loads((big / "tokenizer.json").read_text())
    data["model"]["vocab"]["fox"] = size + 5
    (big / "tokenizer.json").write_text(json.dumps(data))
    r = import_(stack, archive(big))
    assert r.status_code == 422, r.text
    assert f"ids up to {size + 5}; config.json's vocab_size is {size}" in r.json()["error"][
        "message"], r.text
    # a malformed tokenizer.json
    broken = tmp_path / "broken-tokenizer"
    shutil.copytree(bert, broken)
    (broken / "tokenizer.json").write_text('{"model": {"type": "WordPiece", "vocab": 3}}')
    r = import_(stack, archive(broken))
    assert r.status_code == 422 and "tokenizer" in r.json()["error"]["message"], r.text
    # a vocabulary far past the model's, its ids all in range (each entry costs memory
    # wherever the tokenizer loads: the audit's 2 M entries took ~1 GB)
    padded = tmp_path / "padded-tokenizer"
    shutil.copytree(bert, padded)
    data = json.loads((padded / "tokenizer.json").read_text())
    data["model"]["vocab"].update({f"extra{i}": i % size for i in range(5 * size)})
    (padded / "tokenizer.json").write_text(json.dumps(data))
    r = import_(stack, archive(padded))
    assert r.status_code == 422 and "vocabulary entries" in r.json()["error"]["message"], r.text
    # a sentence-transformers module Cloze does not serve
    dense = sentence_transformers_dir(tmp_path, tokenizer_dir, modes={"mean_tokens": True},
                                      normalize=False, max_seq_length=None)
    modules = json.loads((dense / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Dense",
                    "type": "sentence_transformers.models.Dense"})
    (dense / "modules.json").write_text(json.dumps(modules))
    r = import_(stack, archive(dense))
    assert r.status_code == 422 and "Dense" in r.json()["error"]["message"], r.text

    r = import_(stack, archive(bert, arcname="."), "my-encoder.tar.gz")  # files at the top
    assert r.status_code == 201, r.text
    model_id = r.json()["id"]
    assert r.json()["name"] == "my-encoder"  # named after the file, as no folder names it
    url = f"/v1/models/{model_id}/feature-extraction"
    r = stack.client.post("/v1/embeddings", json={"model": model_id, "input": ["a"] * 10_000})
    assert r.status_code == 413 and r.json()["error"]["param"] == "input", r.text
    r = stack.client.post(url, json={"inputs": ["a"] * 10_000})
    assert r.status_code == 413, r.text
    r = stack.client.post("/v1/embeddings", json={"model": "m_unknown", "input": "a"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    for body in ({"model": model_id, "input": []}, {"model": model_id, "input": [[]]},
                 {"model": model_id, "input": [10**6]}, {"model": model_id, "input": [-1]},
                 {"model": model_id, "input": "a", "dimensions": 10**6},
                 {"model": model_id, "input": "a", "encoding_format": "int8"},
                 {"model": model_id, "input": {"text": "a"}}):
        r = stack.client.post("/v1/embeddings", json=body)
        assert r.status_code == 422, (body, r.text)
    for raw in ('{"inputs": []}', '{"inputs": "\\ud800"}', json.dumps({"inputs": "a" * 30_000}),
                '{"inputs": "a", "truncation_direction": "up"}', '{"inputs": 5}'):
        r = stack.client.post(url, content=raw, headers={"content-type": "application/json"})
        assert r.status_code in (413, 422), (raw, r.text)
    r = stack.client.post(f"/v1/models/{model_id}/sentence-similarity",
                          json={"inputs": {"source_sentence": "a", "sentences": []}})
    assert r.status_code == 422
    # a feature-extraction model has no fill-mask head: the answer says what it serves
    r = stack.client.post(f"/v1/models/{model_id}/fill-mask", json={"inputs": "a [MASK]"})
    assert r.status_code == 422 and "feature-extraction" in r.json()["error"]["message"]


def test_batched_inference_is_admitted_by_load_not_the_request_budget(tokenizer_dir,  # noqa: F811
                                                                      tmp_path):
    """With a budget of 5 requests a minute, an application still embeds at the hardware's
    speed (the model's bounded queue protects the server); other routes keep the budget."""
    from tests.stack import CLOZE, free_port
    from tests.test_rate_limit import _serve

    port = free_port()
    proc = _serve(tmp_path / "home", [*CLOZE, "api"], port, CLOZE_REQUIRE_API_KEYS="false")
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx

        bert = base_bert(tmp_path, tokenizer_dir, "bert")
        r = httpx.post(f"{base}/v1/models/import", timeout=120,
                       files={"file": ("m.tar.gz", archive(bert))})
        assert r.status_code == 201, r.text
        url = f"{base}/v1/models/{r.json()['id']}/feature-extraction"
        codes = [httpx.post(url, json={"inputs": "the dog"}, timeout=60).status_code
                 for _ in range(12)]
        assert codes == [200] * 12
        codes = [httpx.get(f"{base}/v1/jobs", timeout=30).status_code for _ in range(6)]
        assert 429 in codes
    finally:
        proc.terminate()
        proc.wait(timeout=30)
