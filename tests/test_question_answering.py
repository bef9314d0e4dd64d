"""Extractive question answering, in process and fast: SQuAD / CMRC records and their upload
refusals, SQuAD's and CMRC 2018's JSON documents uploaded and previewed, windows over long
contexts (start/end tokens, [CLS] where the answer is not), the best span over windows, exact
match and F1 as SQuAD's and CMRC 2018's scripts compute them, and the serving's span
decoding."""

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jobspec import formats
from jobspec.formats import Answer, AnsweredQuestion, FormatError
from tests.limits_api import Api, assert_error, make_api


def qa(context: str, question: str, *answers: tuple[str, int]) -> AnsweredQuestion:
    return AnsweredQuestion(context, question, tuple(Answer(t, s) for t, s in answers), None,
                            None)


# -- Records


def test_records_in_both_answer_layouts():
    squad = {"context": "Denver Broncos won.", "question": "Who won?",
             "answers": [{"text": "Denver Broncos", "answer_start": 0}]}
    hf = {**squad, "answers": {"text": ["Broncos"], "answer_start": [7]}, "id": 5}
    assert formats.record_kind(squad) == formats.EXTRACTIVE_QA
    assert formats.answered_question(squad).answers == (Answer("Denver Broncos", 0),)
    read = formats.answered_question(hf)
    assert read.answers == (Answer("Broncos", 7),) and read.id == "5"
    none = formats.answered_question({**squad, "answers": [], "is_impossible": True})
    assert none.answers == () and none.labels == []


@pytest.mark.parametrize("change, says", [
    ({"answers": [{"text": "Broncos", "answer_start": 0}]},
     "answers[0].answer_start (0) does not point at answers[0].text ('Broncos')"),
    ({"answers": {"text": ["won"], "answer_start": [99]}}, "answers[0].answer_start (99)"),
    ({"answers": [{"text": "won", "answer_start": "15"}]}, "must be an integer"),
    ({"answers": [{"text": " ", "answer_start": 0}]}, "answers[0].text must be"),
    ({"answers": {"text": ["won"]}}, '"answer_start" of equal length'),
    ({"is_impossible": True}, '"is_impossible" is true but "answers" is not empty'),
    ({"question": ""}, '"question"'),
    ({"context": 3}, '"context"'),
])
def test_bad_records_say_which_field(change, says):
    record = {"context": "Denver Broncos won.", "question": "Who won?",
              "answers": [{"text": "won", "answer_start": 15}], **change}
    with pytest.raises(FormatError) as caught:
        formats.answered_question(record)
    assert says in caught.value.at(7), caught.value.at(7)


@pytest.fixture
def api(tmp_path: Path):
    yield from make_api(tmp_path)


def test_upload_refuses_an_answer_start_that_misses_its_text(api: Api):
    good = {"context": "The cat sat on the mat.", "question": "Where?",
            "answers": [{"text": "the mat", "answer_start": 15}]}
    bad = {**good, "answers": [{"text": "the mat", "answer_start": 14}]}
    data = "\n".join(json.dumps(r) for r in (good, good, bad)).encode()
    assert_error(api.upload("qa.jsonl", data), 422,
                 "line 3: answers[0].answer_start (14) does not point at answers[0].text",
                 "file")
    assert api.stored() == []  # nothing half-stored
    r = api.upload("qa.jsonl", "\n".join(json.dumps(r) for r in (good, good)).encode())
    assert r.status_code == 201, r.text
    assert r.json()["kind"] == formats.EXTRACTIVE_QA and not r.json()["labels"]


# -- SQuAD's and CMRC 2018's files: one JSON document


def squad_document(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The SQuAD 2.0 file holding these flat records (their "split" left out, as SQuAD's files
    have none): consecutive questions about one context are one paragraph, ten paragraphs an
    article; an unanswered question is_impossible, with a plausible answer as SQuAD 2.0's."""
    paragraphs: list[dict[str, Any]] = []
    for r in records:
        qa = {"id": r["id"], "question": r["question"], "answers": r["answers"],
              "is_impossible": not r["answers"]}
        if not r["answers"]:
            qa["plausible_answers"] = [{"text": r["context"][:3], "answer_start": 0}]
        if paragraphs and paragraphs[-1]["context"] == r["context"]:
            paragraphs[-1]["qas"].append(qa)
        else:
            paragraphs.append({"context": r["context"], "qas": [qa]})
    return {"version": "v2.0", "data": [
        {"title": f"Brown {i // 10}", "paragraphs": paragraphs[i:i + 10]}
        for i in range(0, len(paragraphs), 10)]}


def brown_qa(data_dir: Path, split: str, n: int) -> list[dict[str, Any]]:
    """The first n records of a split of the Brown QA set (tests/data/brown-qa.jsonl.gz)."""
    with gzip.open(data_dir / "brown-qa.jsonl.gz", "rt", encoding="utf-8") as f:
        records = (json.loads(line) for line in f)
        return [r for r in records if r["split"] == split][:n]


# CMRC 2018's layout: Chinese contexts, an id on each paragraph and question, no is_impossible.
CMRC = {"version": "v1.0", "data": [
    {"id": "TRAIN_0", "title": "北京", "paragraphs": [
        {"id": "TRAIN_0", "context": "北京是中华人民共和国的首都，位于华北平原的北部。", "qas": [
            {"id": "TRAIN_0_QUERY_0", "question": "中华人民共和国的首都是哪里？",
             "answers": [{"text": "北京", "answer_start": 0}]},
            {"id": "TRAIN_0_QUERY_1", "question": "北京位于哪个平原？",
             "answers": [{"text": "华北平原", "answer_start": 16}]}]}]},
    {"id": "TRAIN_1", "title": "长江与红楼梦", "paragraphs": [
        {"id": "TRAIN_1", "context": "长江是中国最长的河流，全长约6300公里，流经十一个省级行政区。",
         "qas": [{"id": "TRAIN_1_QUERY_0", "question": "中国最长的河流是什么？",
                  "answers": [{"text": "长江", "answer_start": 0}]},
                 {"id": "TRAIN_1_QUERY_1", "question": "长江全长约多少公里？",
                  "answers": [{"text": "6300公里", "answer_start": 14}]}]},
        {"id": "TRAIN_2", "context": "《红楼梦》是清代作家曹雪芹创作的章回体长篇小说。", "qas": [
            {"id": "TRAIN_2_QUERY_0", "question": "《红楼梦》的作者是谁？",
             "answers": [{"text": "曹雪芹", "answer_start": 10}]}]}]}]}


def test_a_squad_file_is_a_qa_dataset(api: Api, data_dir, monkeypatch):
    records = brown_qa(data_dir, "train", 60)
    document = json.dumps(squad_document(records)).encode()
    r = api.upload("train-v2.0.json.gz", gzip.compress(document))
    assert r.status_code == 201, r.text
    found = r.json()
    assert (found["format"], found["kind"], found["documents"], found["splits"]) == (
        "json.gz", formats.EXTRACTIVE_QA, 60, {"train": 60})
    assert not found["labels"]
    # The preview shows the questions as the flat records they are read as.
    preview = api.client.get(f"/v1/datasets/{found['id']}/preview", params={"limit": 2}).json()
    assert [(p["id"], p["question"], p["context"], p["answers"]) for p in preview["records"]] \
        == [(r["id"], r["question"], r["context"], r["answers"]) for r in records[:2]]
    assert preview["rows"] == 60 and not preview["truncated"]
    r = api.upload("cmrc2018_train.json", json.dumps(CMRC, ensure_ascii=False).encode())
    assert r.status_code == 201, r.text
    assert (r.json()["format"], r.json()["kind"], r.json()["documents"]) == (
        "json", formats.EXTRACTIVE_QA, 5)
    stored = api.stored()

    # A broken question names where it is; nothing is stored.
    bad = json.loads(json.dumps(CMRC))
    bad["data"][1]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"] = 13
    assert_error(api.upload("bad.json", json.dumps(bad, ensure_ascii=False).encode()), 422,
                 "data[1].paragraphs[0].qas[1]: answers[0].answer_start (13) does not point "
                 "at answers[0].text ('6300公里')", "file")
    assert_error(api.upload("bad.json", b'{"version": "v2.0", "data": []}'), 422,
                 "the document holds no questions", "file")
    assert_error(api.upload("bad.json", b'{"version": "v2.0",\n "data": [{"title": "x",'), 422,
                 "the document is not valid JSON: Expecting", "file")
    # A document is read whole: past formats.MAX_DOCUMENT_BYTES, it is refused as it arrives.
    monkeypatch.setattr(formats, "MAX_DOCUMENT_BYTES", len(document) // 2)
    r = api.upload("train-v2.0.json", document)
    assert_error(r, 413, "split it into several files, or into JSON lines", "file")
    assert r.json()["error"]["code"] == "document_too_large"
    assert api.stored() == stored


# -- Windows


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A WordPiece tokenizer whose vocabulary is whole words (one token a word)."""
    from transformers import BertTokenizerFast

    words = ("the a cat sat on mat where who what did is of and in to it was dog ran far "
             "away from house garden , . ? one two three four five six seven eight nine ten "
             "北 京 是 首 都 哪 里").split()
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    return BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)


def test_windows_point_at_the_answer_or_cls(tokenizer):
    from workers.engine.finetune.qa import make_windows

    words = "one two three four five six seven eight nine ten".split()
    context = " ".join(words * 3)  # 30 tokens
    start = context.index("seven", 40)  # the second "seven" (token 16)
    example = qa(context, "what is it?", ("seven eight", start))
    # [CLS] what is it ? [SEP] = 6 tokens, then 9 context tokens, [SEP]: windows of 16,
    # each starting 9 - 4 = 5 context tokens after the one before.
    w = make_windows([example, qa(context, "where?")], tokenizer, 16, stride=4)
    assert all(len(ids) <= 16 for ids in w.input_ids)
    first = [i for i, n in enumerate(w.example) if n == 0]
    assert len(first) == 6  # context tokens 0-8, 5-13, 10-18, 15-23, 20-28, 25-29
    found = []
    for i in first:
        if w.starts[i] != w.cls[i]:
            s, e = w.offsets[i][w.starts[i]], w.offsets[i][w.ends[i]]
            found.append((i, context[s[0]:e[1]]))
        else:
            assert w.ends[i] == w.cls[i] == 0
    # tokens 16-17 are whole in the windows starting at tokens 10 and 15
    assert [text for _, text in found] == ["seven eight", "seven eight"]
    assert [i for i, _ in found] == first[2:4]
    # Question tokens and special tokens have no context offsets.
    assert w.offsets[0][:6] == [None] * 6 and w.offsets[0][-1] is None
    # An unanswerable question points at CLS in every window.
    assert all(w.starts[i] == w.ends[i] == 0 for i, n in enumerate(w.example) if n == 1)


def test_long_questions_are_cut_to_leave_the_context_room(tokenizer):
    from workers.engine.finetune.qa import make_windows

    question = " ".join(["where"] * 40) + "?"
    w = make_windows([qa("the cat sat on the mat .", question, ("the mat", 15))], tokenizer,
                     24, stride=8)
    assert w.cut_questions == 1 and all(len(ids) <= 24 for ids in w.input_ids)
    s, e = w.offsets[0][w.starts[0]], w.offsets[0][w.ends[0]]
    assert "the cat sat on the mat ."[s[0]:e[1]] == "the mat"


def test_best_span_over_windows_and_the_null_answer(tokenizer):
    from workers.engine.finetune.qa import best_answers, make_windows

    context = "the cat sat on the mat . the dog ran far away from the house ."
    w = make_windows([qa(context, "who ran?", ("the dog", 25))], tokenizer, 16, stride=4)
    assert len(w) > 1
    starts = [np.zeros(len(ids)) for ids in w.input_ids]
    ends = [np.zeros(len(ids)) for ids in w.input_ids]
    # In the last window, "dog" scores best as start and end: the answer is "dog".
    last = len(w) - 1
    dog = next(t for t, o in enumerate(w.offsets[last]) if o and context[o[0]:o[1]] == "dog")
    starts[last][dog], ends[last][dog] = 5.0, 4.0
    assert best_answers(w, starts, ends, allow_null=False) == ["dog"]
    # A [CLS] score above the best span's in every window: no answer, if allowed.
    for i in range(len(w)):
        starts[i][0], ends[i][0] = 6.0, 6.0
    assert best_answers(w, starts, ends, allow_null=True) == [""]
    assert best_answers(w, starts, ends, allow_null=False) == ["dog"]
    # A span longer than max_answer_tokens or ending before it starts is never taken.
    starts[last][dog], ends[last][dog - 1] = 9.0, 9.0
    assert best_answers(w, starts, ends, allow_null=False) != ["the"]


# -- Scores


def test_squad_normalisation_exact_match_and_f1():
    from workers.engine.finetune.qa import answer_scores, normalize_answer, qa_metrics

    assert normalize_answer("The  Broncos!") == "broncos"
    assert normalize_answer("an apple, a pear") == "apple pear"
    # SQuAD v1.1 dev: "Denver Broncos" predicted as "the Broncos": EM 0, F1 2/3.
    example = qa("The Denver Broncos won.", "Who won?", ("Denver Broncos", 4))
    em, f1 = answer_scores(example, "the Broncos")
    assert em == 0.0 and f1 == pytest.approx(2 / 3)
    assert answer_scores(example, "denver broncos.") == (1.0, 1.0)
    # The best over several answers: P = 1/3, R = 1 -> F1 0.5 against "Santa Clara".
    several = qa("Levi's Stadium in Santa Clara, California", "Where?",
                 ("Levi's Stadium", 0), ("Santa Clara", 18))
    assert answer_scores(several, "Santa Clara California") == (0.0, pytest.approx(0.8))
    assert answer_scores(several, "Stadium in Santa Clara")[1] == pytest.approx(
        max(2 * (1 / 4) * (1 / 2) / (1 / 4 + 1 / 2), 2 * (2 / 4) * 1 / (2 / 4 + 1)))
    # SQuAD 2.0: no answer is right only when the question has none.
    impossible = qa("The Denver Broncos won.", "Who lost?")
    assert answer_scores(impossible, "") == (1.0, 1.0)
    assert answer_scores(impossible, "Broncos") == (0.0, 0.0)
    assert answer_scores(example, "") == (0.0, 0.0)
    scores = qa_metrics([example, impossible], ["the Broncos", ""])
    assert scores == {"exact_match": 0.5, "f1": pytest.approx((2 / 3 + 1) / 2)}


def test_cmrc_character_scores():
    from workers.engine.finetune.qa import answer_scores, cmrc_f1

    example = qa("北京是中国的首都。", "中国的首都是哪里？", ("北京", 0))
    assert answer_scores(example, "北京") == (1.0, 1.0)
    assert answer_scores(example, "北京。") == (1.0, 1.0)  # punctuation removed
    # "北京是" against "北京": longest common run 2; P 2/3, R 1 -> F1 0.8
    assert answer_scores(example, "北京是") == (0.0, pytest.approx(0.8))
    assert cmrc_f1("北京首都", "首都北京") == pytest.approx(0.5)  # a run, not a bag
    assert cmrc_f1("2008年北京", "2008年") == pytest.approx(2 * (2 / 2) * (2 / 4) / (1 + 0.5))


# -- Serving's span decoding


def test_top_spans_respect_order_and_length():
    from service.inference.question_answering import _top_spans

    start = np.array([0.0, 0.1, 0.6, 0.3])
    end = np.array([0.0, 0.5, 0.1, 0.4])
    allowed = np.array([True, True, True, True])
    spans = _top_spans(start, end, 3, 15, allowed)
    assert [(s, e) for s, e, _ in spans] == [(2, 3), (3, 3), (2, 2)]
    assert spans[0][2] == pytest.approx(0.24)
    # A start after its end is never a span; nor one longer than max_answer_len.
    assert all(s <= e for s, e, _ in spans)
    assert [(s, e) for s, e, _ in _top_spans(start, end, 1, 1, allowed)] == [(3, 3)]
    # Disallowed tokens (the question's) are dropped.
    assert [(s, e) for s, e, _ in _top_spans(start, end, 1, 15,
                                             np.array([True, True, True, False]))] == []


# -- Adapters


def test_adalora_trains_question_answering_and_exports_a_plain_model(tmp_path):
    """AdaLoRA (peft) on extractive QA, as on the sequence tasks: its rank schedule over the
    run's steps, the orthogonal penalty in the loss; the export merges the adapters into a
    plain AutoModelForQuestionAnswering."""
    import gzip

    from transformers import AutoModelForQuestionAnswering

    from jobspec import parse_spec
    from tests.inference_helpers import bert
    from workers.engine.finetune import run_finetune

    class Quiet:
        def __init__(self) -> None:
            self.events: list[str] = []

        def event(self, level: str, message: str) -> None:
            self.events.append(message)

        def log(self, point: dict) -> None:
            pass

        def eval(self, point: dict) -> None:
            pass

        def checkpoint(self, step: int, directory: str) -> None:
            pass

        def should_stop(self) -> bool:
            return False

    base = bert(tmp_path / "base", vocab_size=300)
    with gzip.open(Path(__file__).parent / "data" / "brown-qa.jsonl.gz", "rt") as fh:
        records = [json.loads(line) for line in fh]
    few = [r for split, n in (("train", 48), ("valid", 16), ("test", 16))
           for r in [r for r in records if r["split"] == split][:n]]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in few))
    spec = parse_spec({"type": "finetune", "task": "question_answering", "base_model_id": "m",
                       "dataset_id": "d", "adapter": {"type": "adalora", "r": 2},
                       "hyperparameters": {"max_steps": 10, "batch_size": 8,
                                           "sequence_length": 64, "learning_rate": 1e-3}})
    reporter = Quiet()
    result = run_finetune(spec, str(base), {"train": (str(data), "jsonl")},  # type: ignore[arg-type]
                          str(tmp_path / "run"), reporter, device="cpu")
    assert result.steps == 10 and result.export_dir is not None
    assert 0 < result.trainable_parameters < result.num_parameters
    assert {"exact_match", "f1"} <= set(result.test_metrics or {})
    model = AutoModelForQuestionAnswering.from_pretrained(result.export_dir)
    assert not any("lora" in name for name, _ in model.named_parameters())
