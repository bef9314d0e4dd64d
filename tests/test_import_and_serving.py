"""Importing Hugging Face model directories (safely) and serving every task in the Hugging
Face Inference API formats, checked against transformers' own pipelines and InferenceClient."""

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.stack import Stack


def archive(directory: Path, arcname: str = "model") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(directory, arcname=arcname)
    return buf.getvalue()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A small WordPiece tokenizer, trained here on a line of text (nothing downloaded)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog in paris france"] * 10,
                            trainers.WordPieceTrainer(vocab_size=200, special_tokens=[
                                "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    out = tmp_path_factory.mktemp("tok")
    fast.save_pretrained(out)
    return out


def hf_model(tmp: Path, tokenizer_dir: Path, head: str) -> Path:
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        BertForTokenClassification,
        GPT2Config,
        GPT2LMHeadModel,
    )

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64, "vocab_size": len(tokenizer)}
    if head == "classify":
        model = BertForSequenceClassification(BertConfig(
            **small, num_labels=2, id2label={0: "ham", 1: "spam"}, label2id={"ham": 0, "spam": 1}))
    elif head == "tokens":
        tags = ["O", "B-LOC", "I-LOC"]
        model = BertForTokenClassification(BertConfig(
            **small, num_labels=3, id2label=dict(enumerate(tags)),
            label2id={t: i for i, t in enumerate(tags)}))
    else:
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=64,
                                           vocab_size=len(tokenizer),
                                           eos_token_id=tokenizer.sep_token_id,
                                           bos_token_id=tokenizer.cls_token_id))
    out = tmp / head
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def import_(stack: Stack, data: bytes, filename: str = "m.tar.gz"):
    return stack.client.post("/v1/models/import", files={"file": (filename, data)})


def test_import_and_serve_every_task(embedded_stack, tokenizer_dir, tmp_path):
    from huggingface_hub import InferenceClient
    from transformers import pipeline

    stack = embedded_stack
    text = "the quick brown fox in paris"
    for head, task, route in (("classify", "text-classification", "classify"),
                              ("tokens", "token-classification", "token-classification"),
                              ("generate", "text-generation", "generate")):
        directory = hf_model(tmp_path, tokenizer_dir, head)
        r = import_(stack, archive(directory))
        assert r.status_code == 201, r.text
        model = r.json()
        assert model["task"] == task and model["job_id"] is None
        url = f"/v1/models/{model['id']}/{route}"
        local = pipeline(task, model=str(directory), device="cpu")
        client = InferenceClient(model=f"{stack.url}{url}")
        if head == "classify":
            ours = stack.client.post(url, json={"inputs": text}).json()
            assert len(ours) == 1 and {a["label"] for a in ours[0]} == {"ham", "spam"}
            theirs = local(text, top_k=None)
            assert [a["label"] for a in ours[0]] == [a["label"] for a in theirs]
            assert abs(ours[0][0]["score"] - theirs[0]["score"]) < 1e-5
            hf = client.text_classification(text)
            assert [a.label for a in hf] == [a["label"] for a in theirs]
            top1 = stack.client.post(url, json={"inputs": [text, "dog"],
                                                "parameters": {"top_k": 1}}).json()
            assert len(top1) == 2 and all(len(x) == 1 for x in top1)
        elif head == "tokens":
            ours = stack.client.post(url, json={"inputs": text}).json()
            theirs = local(text, aggregation_strategy="simple")
            assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in ours] == \
                [(e["entity_group"], e["word"], e["start"], e["end"]) for e in theirs]
            assert all(set(e) == {"entity_group", "score", "word", "start", "end"} for e in ours)
            hf = client.token_classification(text)
            assert [e.word for e in hf] == [e["word"] for e in theirs]
        else:
            params = {"max_new_tokens": 5, "do_sample": False}
            ours = stack.client.post(url, json={"inputs": text, "parameters": params}).json()
            theirs = local(text, max_new_tokens=5, do_sample=False)
            assert ours == [{"generated_text": theirs[0]["generated_text"]}]
            seeded = {"max_new_tokens": 8, "temperature": 1.0, "top_p": 0.9, "seed": 7}
            a = stack.client.post(url, json={"inputs": text, "parameters": seeded}).json()
            b = stack.client.post(url, json={"inputs": text, "parameters": seeded}).json()
            assert a == b  # a seed makes sampling repeatable
            assert client.text_generation(text, max_new_tokens=5, do_sample=False) == \
                theirs[0]["generated_text"]
        # an endpoint of another task says which one to use
        other = "fill-mask" if route != "fill-mask" else "classify"
        r = stack.client.post(f"/v1/models/{model['id']}/{other}", json={"inputs": "x [MASK]"})
        assert r.status_code == 422 and route in r.json()["error"]["message"]


def _tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.addfile(member, io.BytesIO(data) if data else None)
    return buf.getvalue()


def test_unsafe_archives_are_refused(embedded_stack, tokenizer_dir, tmp_path):
    stack = embedded_stack
    evil = tarfile.TarInfo("../../etc/cron.d/x")
    evil.size = 3
    link = tarfile.TarInfo("model/config.json")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    absolute = tarfile.TarInfo("/tmp/x.json")
    absolute.size = 2
    for data, says in ((_tar_with(evil, b"x\n\n"), "parent path"),
                       (_tar_with(link), "not a regular file"),
                       (_tar_with(absolute, b"{}"), "absolute")):
        r = import_(stack, data)
        assert r.status_code == 422 and says in r.json()["error"]["message"], r.text
    # pickled weights are never accepted: beside safetensors weights they are skipped (not
    # stored; tests/test_embeddings.py), alone they are refused
    directory = hf_model(tmp_path, tokenizer_dir, "classify")
    (directory / "model.safetensors").unlink()
    (directory / "pytorch_model.bin").write_bytes(b"not really a pickle")
    r = import_(stack, archive(directory))
    assert r.status_code == 422 and "safetensors" in r.json()["error"]["message"]
    (directory / "pytorch_model.bin").unlink()
    r = import_(stack, archive(directory))
    assert r.status_code == 422 and "safetensors" in r.json()["error"]["message"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../escape.json", "{}")
    r = import_(stack, buf.getvalue(), "m.zip")
    assert r.status_code == 422
    r = import_(stack, b"not an archive at all")
    assert r.status_code == 415
