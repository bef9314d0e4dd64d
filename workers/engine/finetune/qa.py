"""Extractive question answering (SQuAD, CMRC) as a plug-in of the one loop (loop.py).

A question and its context go in as one sequence, [CLS] question [SEP] context [SEP]; a
context longer than the sequence is read in windows that overlap by a stride (the
tokenizer's overflowing tokens), as transformers' run_qa.py example does. Each window is
trained to point at the answer's first and last token, or at [CLS] when the answer is not in
the window or the question has none (SQuAD 2.0). Evaluation takes the best span over a
question's windows (the n best starts and ends, spans of at most MAX_ANSWER_TOKENS), or no
answer when the [CLS] score beats it and the data has unanswerable questions, and scores it
with exact match and F1 as SQuAD's official script does (CMRC 2018's for Chinese contexts).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from jobspec import FinetuneSpec
from jobspec.formats import AnsweredQuestion
from jobspec.metrics import EVAL_LOSS
from jobspec.model_facts import run_fingerprint
from jobspec.pooling import base_pooling
from jobspec.sizing import estimate_finetune_bytes
from workers.engine.checkpoint import save_export
from workers.engine.distributed import SINGLE, Parallel
from workers.engine.failures import ConfigError, CorpusError
from workers.engine.finetune.lora import (
    adalora_penalty,
    adalora_step,
    add_lora,
    merge,
    unwrap,
)
from workers.engine.finetune.model import load_base
from workers.engine.finetune.records import load_splits
from workers.engine.finetune.task import GroupedSampler
from workers.engine.loop import LoopSettings, pick_device, train
from workers.engine.objective import Batch
from workers.engine.optim import Schedule
from workers.engine.reporter import Reporter
from workers.engine.speed import resolve_attention

# The QA head has two outputs per token (start, end); transformers names them so.
HEAD_LABELS = ["LABEL_0", "LABEL_1"]
# run_qa.py's defaults: the starts and ends considered per window, the longest answer.
N_BEST = 20
MAX_ANSWER_TOKENS = 30
# The overlap of windows: as transformers' question-answering pipeline reads a context
# (half the window, at most 128 tokens), so the model is served as it was trained.
MAX_STRIDE = 128


def stride_for(max_length: int) -> int:
    return min(max_length // 2, MAX_STRIDE)


# -- Windows


@dataclass
class Windows:
    """A split's questions as model windows, and what scoring them needs."""

    examples: list[AnsweredQuestion]
    input_ids: list[list[int]] = field(default_factory=list)
    token_type_ids: list[list[int]] | None = None
    starts: list[int] = field(default_factory=list)  # the answer's first token, or CLS
    ends: list[int] = field(default_factory=list)  # its last token, or CLS
    example: list[int] = field(default_factory=list)  # the question of each window
    # Each token's characters in the context; None outside it (question, special tokens).
    offsets: list[list[tuple[int, int] | None]] = field(default_factory=list)
    cls: list[int] = field(default_factory=list)  # where each window's CLS token is
    cut_questions: int = 0  # questions cut to fit a window with its stride

    def __len__(self) -> int:
        return len(self.input_ids)

    def tokens(self) -> int:
        return sum(len(ids) for ids in self.input_ids)


def _cut_questions(questions: list[str], tokenizer: Any, longest: int) -> tuple[list[str], int]:
    """Questions of at most `longest` tokens (longer ones cut at a token's end)."""
    encoded = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    out, cut = [], 0
    for question, offsets in zip(questions, encoded["offset_mapping"], strict=True):
        if len(offsets) > longest:
            question = question[:offsets[longest - 1][1]]
            cut += 1
        out.append(question)
    return out, cut


def make_windows(examples: Sequence[AnsweredQuestion], tokenizer: Any, max_length: int,
                 stride: int | None = None) -> Windows:
    """Each question with its context in windows of max_length tokens overlapping by
    `stride` (default stride_for), the first answer's token positions in each (CLS where the
    window does not hold it whole, or the question has none)."""
    stride = stride_for(max_length) if stride is None else stride
    special = tokenizer.num_special_tokens_to_add(pair=True)
    # Room for the question: the context's part of a window must be longer than the stride.
    longest = max_length - special - stride - 1
    if longest < 1:
        raise ConfigError(f"hyperparameters.sequence_length ({max_length}) leaves no room for "
                          "a question and its context")
    questions, cut = _cut_questions([e.question.lstrip() for e in examples], tokenizer,
                                    longest)
    windows = Windows(list(examples), cut_questions=cut)
    if not examples:
        return windows
    encoded = tokenizer(questions, [e.context for e in examples], truncation="only_second",
                        max_length=max_length, stride=stride, return_overflowing_tokens=True,
                        return_offsets_mapping=True)
    if "token_type_ids" in encoded:
        windows.token_type_ids = encoded["token_type_ids"]
    cls_id = tokenizer.cls_token_id
    for i, ids in enumerate(encoded["input_ids"]):
        n = encoded["overflow_to_sample_mapping"][i]
        sequence = encoded.sequence_ids(i)
        offsets = [tuple(o) if s == 1 else None
                   for o, s in zip(encoded["offset_mapping"][i], sequence, strict=True)]
        cls = ids.index(cls_id) if cls_id in ids else 0
        start = end = cls
        answers = examples[n].answers
        context = [t for t, o in enumerate(offsets) if o is not None]
        if answers and context:
            first, last = answers[0].start, answers[0].start + len(answers[0].text)
            low, high = offsets[context[0]], offsets[context[-1]]
            assert low is not None and high is not None
            if low[0] <= first and high[1] >= last:  # the whole answer is in this window
                start = next(t for t in context if offsets[t][1] > first)  # type: ignore[index]
                end = next(t for t in reversed(context)
                           if offsets[t][0] < last)  # type: ignore[index]
        windows.input_ids.append(ids)
        windows.starts.append(start)
        windows.ends.append(end)
        windows.example.append(n)
        windows.offsets.append(offsets)
        windows.cls.append(cls)
    return windows


def collate(windows: Windows, indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Model inputs and answer positions of some windows, right-padded to the longest."""
    width = max(len(windows.input_ids[i]) for i in indices)
    batch = {"input_ids": torch.full((len(indices), width), pad_id, dtype=torch.long),
             "attention_mask": torch.zeros((len(indices), width), dtype=torch.long)}
    if windows.token_type_ids is not None:
        batch["token_type_ids"] = torch.zeros((len(indices), width), dtype=torch.long)
    for row, i in enumerate(indices):
        n = len(windows.input_ids[i])
        batch["input_ids"][row, :n] = torch.tensor(windows.input_ids[i])
        batch["attention_mask"][row, :n] = 1
        if windows.token_type_ids is not None:
            batch["token_type_ids"][row, :n] = torch.tensor(windows.token_type_ids[i])
    batch["start_positions"] = torch.tensor([windows.starts[i] for i in indices])
    batch["end_positions"] = torch.tensor([windows.ends[i] for i in indices])
    return batch


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def span_losses(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Per window, the mean of the start and end positions' cross-entropy (as transformers'
    QA heads compute the loss), in fp32."""
    out = model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS})
    start = F.cross_entropy(out.start_logits.float(), batch["start_positions"], reduction="none")
    end = F.cross_entropy(out.end_logits.float(), batch["end_positions"], reduction="none")
    return (start + end) / 2


# -- From windows' scores to answers


def best_answers(windows: Windows, start_logits: Sequence[np.ndarray],
                 end_logits: Sequence[np.ndarray], *, allow_null: bool,
                 n_best: int = N_BEST, max_answer_tokens: int = MAX_ANSWER_TOKENS
                 ) -> list[str]:
    """Each question's answer: the highest-scoring span (start logit + end logit) over its
    windows, among the n_best starts and ends of each, of at most max_answer_tokens tokens;
    with allow_null, "" (no answer) when the smallest [CLS] score of its windows beats it
    (run_qa.py's postprocess_qa_predictions with a null threshold of 0)."""
    best: list[tuple[float, str] | None] = [None] * len(windows.examples)
    null: list[float | None] = [None] * len(windows.examples)
    for w, n in enumerate(windows.example):
        starts, ends = start_logits[w], end_logits[w]
        offsets, cls = windows.offsets[w], windows.cls[w]
        null_score = float(starts[cls] + ends[cls])
        if null[n] is None or null_score < null[n]:  # type: ignore[operator]
            null[n] = null_score
        context = windows.examples[n].context
        for s in np.argsort(starts)[::-1][:n_best]:
            for e in np.argsort(ends)[::-1][:n_best]:
                if s >= len(offsets) or e >= len(offsets) or offsets[s] is None \
                        or offsets[e] is None or e < s or e - s + 1 > max_answer_tokens:
                    continue
                score = float(starts[s] + ends[e])
                if best[n] is None or score > best[n][0]:  # type: ignore[index]
                    best[n] = (score, context[offsets[s][0]:offsets[e][1]])
    answers = []
    for n in range(len(windows.examples)):
        found, no_answer = best[n], null[n]
        if found is None or (allow_null and no_answer is not None and no_answer > found[0]):
            answers.append("")
        else:
            answers.append(found[1])
    return answers


# -- Scores: SQuAD's official evaluation (v2.0, which agrees with v1.1 on answerable
# questions), and CMRC 2018's for Chinese


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(c for c in text if c not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_exact(gold: str, predicted: str) -> float:
    return float(normalize_answer(gold) == normalize_answer(predicted))


def squad_f1(gold: str, predicted: str) -> float:
    """Token F1 of the normalised answers; an empty one (no answer) scores 1 only against
    another empty one."""
    gold_tokens, pred_tokens = normalize_answer(gold).split(), normalize_answer(predicted).split()
    if not gold_tokens or not pred_tokens:
        return float(gold_tokens == pred_tokens)
    common = sum((Counter(gold_tokens) & Counter(pred_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


# CMRC 2018's evaluation script: these characters are punctuation, a CJK character is a
# token of its own, and other text is split into words (the script uses nltk's
# word_tokenize there; here: runs of word characters, and each other non-space character).
CMRC_PUNCTUATION = set("-:_*^/\\~`+=，。：？！“”；’《》……·、「」（）－～『』")
CJK = re.compile(r"[\u4e00-\u9fa5]")


def is_chinese(text: str) -> bool:
    return CJK.search(text) is not None


def _cmrc_segments(text: str) -> list[str]:
    out, run = [], ""
    for char in text.lower().strip():
        if char in CMRC_PUNCTUATION:
            continue
        if CJK.match(char):
            out += re.findall(r"\w+|[^\w\s]", run)
            run = ""
            out.append(char)
        else:
            run += char
    return out + re.findall(r"\w+|[^\w\s]", run)


def _longest_common_run(a: list[str], b: list[str]) -> int:
    """The length of the longest run of segments both hold in a row (CMRC's find_lcs)."""
    best, previous = 0, [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                current[j + 1] = previous[j] + 1
                best = max(best, current[j + 1])
        previous = current
    return best


def cmrc_exact(gold: str, predicted: str) -> float:
    def plain(text: str) -> str:
        return "".join(c for c in text.lower().strip() if c not in CMRC_PUNCTUATION)
    return float(plain(gold) == plain(predicted))


def cmrc_f1(gold: str, predicted: str) -> float:
    gold_segs, pred_segs = _cmrc_segments(gold), _cmrc_segments(predicted)
    common = _longest_common_run(gold_segs, pred_segs)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_segs), common / len(gold_segs)
    return 2 * precision * recall / (precision + recall)


def answer_scores(example: AnsweredQuestion, predicted: str) -> tuple[float, float]:
    """(exact match, F1) of one prediction: the best over the question's answers; a
    question without answers is scored against "" (SQuAD 2.0). Chinese contexts are scored
    as CMRC 2018 scores them (characters, punctuation removed)."""
    if is_chinese(example.context):
        golds = [a.text for a in example.answers] or [""]
        if not golds[0] or not predicted:  # no answer: right only against no answer
            same = float(golds[0] == predicted == "")
            return same, same
        return (max(cmrc_exact(g, predicted) for g in golds),
                max(cmrc_f1(g, predicted) for g in golds))
    golds = [a.text for a in example.answers if normalize_answer(a.text)] or [""]
    return (max(squad_exact(g, predicted) for g in golds),
            max(squad_f1(g, predicted) for g in golds))


def qa_metrics(examples: Sequence[AnsweredQuestion], predicted: Sequence[str]
               ) -> dict[str, float]:
    """Mean exact match and F1 (fractions, SQuAD's percentages / 100)."""
    scores = [answer_scores(e, p) for e, p in zip(examples, predicted, strict=True)]
    count = max(1, len(scores))
    return {"exact_match": sum(s[0] for s in scores) / count,
            "f1": sum(s[1] for s in scores) / count}


# -- The plug-in


class QuestionAnswering:
    """Batches of windows of similar length from a seeded shuffle per epoch; the loss is the
    mean over windows; eval answers each validation question and scores it. With AdaLoRA
    adapters the loss carries their orthogonal regularisation and after_step reallocates
    their ranks, as in task.py's Classification."""

    def __init__(self, model: torch.nn.Module, weights: torch.nn.Module, tokenizer: Any,
                 windows: dict[str, Windows], *, allow_null: bool, batch_size: int, seed: int,
                 lora: bool, fingerprint: dict[str, Any], adalora: bool = False) -> None:
        self.model, self.weights, self.tokenizer = model, weights, tokenizer
        self.train, self.valid = windows["train"], windows["valid"]
        self.allow_null = allow_null
        self.batch_size, self.seed, self.lora, self.adalora = batch_size, seed, lora, adalora
        self.steps = 0  # optimizer steps taken (AdaLoRA's schedule reads it)
        self.sampler = GroupedSampler([len(ids) for ids in self.train.input_ids], batch_size,
                                      seed)
        self._fingerprint = fingerprint
        self.final: torch.nn.Module | None = None

    def next_batch(self) -> tuple[Batch, dict[str, int]]:
        indices = self.sampler.next_batch().tolist()
        return (collate(self.train, indices, self.tokenizer.pad_token_id),
                {"targets": len(indices)})

    def tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum())

    def loss(self, micro: Batch, norms: dict[str, int], device: torch.device) -> torch.Tensor:
        micro = {k: v.to(device, non_blocking=True) for k, v in micro.items()}
        loss = span_losses(self.model, micro).sum() / norms["targets"]
        if self.adalora:  # its share of the batch's one penalty
            loss = loss + adalora_penalty(self.model) * (len(micro["input_ids"]) /
                                                          norms["targets"])
        return loss

    def after_step(self) -> None:
        """Called by the loop after each optimizer step, before the gradients are cleared."""
        self.steps += 1
        if self.adalora:
            adalora_step(self.model, self.steps)

    @torch.no_grad()
    def evaluate(self, device: torch.device, split: Windows | None = None,
                 model: torch.nn.Module | None = None) -> dict[str, Any]:
        """eval_loss (over windows), exact_match and f1 (over questions), in fp32."""
        model = model or self.model
        windows = split or self.valid
        was_training = model.training
        model.eval()
        order = sorted(range(len(windows)), key=lambda i: -len(windows.input_ids[i]))
        starts: list[Any] = [None] * len(windows)
        ends: list[Any] = [None] * len(windows)
        loss_sum = 0.0
        for first in range(0, len(order), self.batch_size):
            indices = order[first:first + self.batch_size]
            batch = {k: v.to(device)
                     for k, v in collate(windows, indices, self.tokenizer.pad_token_id).items()}
            out = model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS})
            start = F.cross_entropy(out.start_logits.float(), batch["start_positions"],
                                    reduction="sum")
            end = F.cross_entropy(out.end_logits.float(), batch["end_positions"],
                                  reduction="sum")
            loss_sum += float((start + end) / 2)
            s_all, e_all = out.start_logits.float().cpu().numpy(), \
                out.end_logits.float().cpu().numpy()
            for row, i in enumerate(indices):
                n = len(windows.input_ids[i])
                starts[i], ends[i] = s_all[row, :n], e_all[row, :n]
        model.train(was_training)
        predicted = best_answers(windows, starts, ends, allow_null=self.allow_null)
        return {EVAL_LOSS: loss_sum / max(1, len(windows)),
                **qa_metrics(windows.examples, predicted)}

    def state(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state(), "steps": self.steps}

    def restore(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))
        position = state["sampler"]
        self.sampler = GroupedSampler([len(ids) for ids in self.train.input_ids],
                                      self.batch_size, self.seed, position["epoch"],
                                      position["position"])

    def fingerprint(self) -> dict[str, Any]:
        return self._fingerprint

    def export(self, directory: Path) -> Path:
        self.final = merge(self.model) if self.lora else self.model
        return save_export(directory, self.final, self.tokenizer)


def _describe(scores: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if k != "step")


def run_question_answering(spec: FinetuneSpec, base_model_dir: str | None,
                           data: dict[str, Any], workdir: str, reporter: Reporter,
                           device: str | None = None, resume_from: str | None = None,
                           base_config: dict[str, Any] | None = None,
                           parallel: Parallel = SINGLE) -> Any:
    """run_finetune for spec.task question_answering (its arguments and result)."""
    from workers.engine.finetune.run import FinetuneResult

    reporter = parallel.reporter(reporter)
    hp = spec.hyperparameters
    dev = pick_device(device)
    splits = load_splits(spec.task, data, None, spec.validation_fraction, columns=spec.columns)
    for note in splits.notes:
        reporter.event("info", note)
    records = {name: [e.qa for e in examples if e.qa is not None]
               for name, examples in (("train", splits.train), ("valid", splits.valid),
                                      ("test", splits.test)) if examples is not None}
    unanswerable = sum(not r.answers for r in records["train"])
    if unanswerable == len(records["train"]):
        raise CorpusError("the train data has no answered question to learn from")

    base = load_base(spec.task, HEAD_LABELS, base_model_dir, base_config, dropout=hp.dropout,
                     attention=resolve_attention("auto", dev), seed=hp.seed)
    if hp.sequence_length > base.max_length:
        raise ConfigError(f"hyperparameters.sequence_length ({hp.sequence_length}) exceeds "
                          f"what the base model takes ({base.max_length})")
    tokenizer, model = base.tokenizer, base.model
    if tokenizer.padding_side != "right":
        raise ConfigError("the base model's tokenizer pads on the left; question answering "
                          "reads the question first and needs right padding")
    tokenizer.model_max_length = hp.sequence_length  # serving reads windows of this length
    origin = "randomly initialised" if base_model_dir is None else "from the base model"
    reporter.event("info", f"{type(model).__name__} {origin}, new head: "
                           f"{', '.join(base.head)}")
    config: Any = model.config
    num_parameters = sum(p.numel() for p in model.parameters())
    memory = estimate_finetune_bytes(spec, config, num_parameters, len(HEAD_LABELS))
    weights = model

    stride = stride_for(hp.sequence_length)
    windows = {name: make_windows(examples, tokenizer, hp.sequence_length, stride)
               for name, examples in records.items()}
    for name, split in windows.items():
        many = len(split) - len(split.examples)
        reporter.event("info", f"{len(split.examples)} {name} questions in {len(split)} "
                               f"windows of {hp.sequence_length} tokens (stride {stride})"
                               + (f"; {many} more for long contexts" if many else ""))
        if split.cut_questions:
            reporter.event("warning", f"{split.cut_questions} {name} questions were cut to "
                                      "fit a window with its context")
    allow_null = unanswerable > 0
    if allow_null:
        reporter.event("info", f"{unanswerable} of {len(records['train'])} training questions "
                               "have no answer (SQuAD 2.0): the model may answer none")
    train_split = windows["train"]
    steps_per_epoch = hp.steps_per_epoch(len(train_split))
    total, learning_rate, resolved = hp.resolve(len(train_split), config.hidden_size)
    if resolved:
        reporter.event("info", "hyperparameters " + "; ".join(resolved))
    if spec.adapter is not None:  # AdaLoRA's rank budget is scheduled over the run's steps
        model = add_lora(model, spec.adapter, base.head, total)
        weights = unwrap(model)
    fingerprint = run_fingerprint(
        spec, labels=[], base_model=base_model_dir is not None,
        examples={name: len(split) for name, split in windows.items()},
        tokens={name: split.tokens() for name, split in windows.items()})
    task = QuestionAnswering(model, weights, tokenizer, windows, allow_null=allow_null,
                             batch_size=hp.batch_size, seed=hp.seed,
                             lora=spec.adapter is not None, fingerprint=fingerprint,
                             adalora=spec.adapter is not None
                             and spec.adapter.type == "adalora")
    loop = LoopSettings(
        schedule=Schedule(total=total, warmup=round(hp.warmup_ratio * total)),
        batch_size=hp.batch_size, micro_batch=hp.batch_size, learning_rate=learning_rate,
        weight_decay=hp.weight_decay, max_grad_norm=hp.max_grad_norm, precision=hp.precision,
        log_every=spec.log_every, eval_every=spec.eval_every or steps_per_epoch,
        checkpoint_every=spec.checkpoint_every or steps_per_epoch, memory_bytes=memory,
        early_stopping=spec.early_stopping,
        pooling=None if base_model_dir is None else base_pooling(base_model_dir))
    result = train(task, loop, workdir, reporter, dev, resume_from, parallel)

    test_metrics = None
    if result.export_dir is not None and "test" in windows and task.final is not None:
        test_metrics = task.evaluate(dev, windows["test"], task.final)
        reporter.event("info", f"test ({len(windows['test'].examples)} questions): "
                               f"{_describe(test_metrics)}")
    return FinetuneResult(**{**vars(result), "num_parameters": num_parameters},
                          task=spec.pipeline_task, labels=[], test_metrics=test_metrics)
