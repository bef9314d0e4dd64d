"""Continuous batching on a decoder: the one owner of a text-generation model's decoding loop.

Each loaded text-generation model has one thread that runs decode steps for its running
batch. A request joins at the next step: its prompt is run alone (the prefill, with a key/value
cache of its own), then its cache is stacked onto the batch's, left-padded to the longest,
with an attention mask over the padding and each row's own position ids, so every row sees
exactly what it would see alone (greedy output equals transformers' pipeline). A sequence
leaves the batch when it ends: its EOS token, max_new_tokens, a stop sequence, or its caller
went away (cancel()); the columns no remaining row needs are dropped with it.

Bounded, as the other models' Batcher is: at most `max_batch` sequences decode together,
at most `max_queue` wait to join (one more is Overloaded: 503 + Retry-After upstream), and
the running sequences' prompts and new tokens together stay within `max_tokens` (the
key/value cache's size), so a long request waits for room instead of exhausting memory.

The thread talks to callers through `Sequence.emit` (called on this thread: the caller's
function hands the event to its own event loop): a Token per new token, the last one carrying
how the sequence Finished, or Failed.
"""

import logging
import random
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from service.inference.batcher import Overloaded

log = logging.getLogger("cloze.inference")


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy (argmax) unless `sample`; the processors apply
    in transformers' order (repetition penalty, temperature, top-k, top-p)."""
    sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None  # per sequence: its own torch.Generator


@dataclass
class Finished:
    reason: str  # "eos_token", "length" or "stop_sequence" (TGI's names)
    text: str  # the new tokens decoded as the pipeline decodes them (special tokens skipped)
    tokens: int
    seed: int | None
    stop_at: int | None  # where the stop sequence starts in `text`


@dataclass
class Token:
    id: int
    text: str  # what this token adds to the decoded text ("" while a character is partial)
    logprob: float
    special: bool
    top: list[tuple[int, str, float]]  # the top_n likeliest (id, text, logprob), if asked
    # On the sequence's last token (in the same event, so a stream can send the two as one).
    end: Finished | None = None


@dataclass
class Failed:
    error: BaseException


Event = Token | Failed


@dataclass(eq=False)
class Sequence:
    """One prompt to continue, and where its events go."""
    prompt_ids: list[int]
    max_new_tokens: int
    sampling: Sampling
    emit: Callable[[Event], None]
    stop: list[str] = field(default_factory=list)
    top_n: int = 0
    # Whether each token's text is wanted (streams, stop sequences, details); else the text
    # is decoded once, at the end.
    token_text: bool = False
    cancelled: bool = False

    def cancel(self) -> None:
        """The caller went away: the sequence leaves the batch at the next step."""
        self.cancelled = True

    @property
    def cost(self) -> int:
        """Tokens it may hold in the cache."""
        return len(self.prompt_ids) + self.max_new_tokens


@dataclass(eq=False)
class _Running:
    seq: Sequence
    tokens: list[int]  # prompt and new tokens
    new: list[int]
    generator: torch.Generator | None
    seed: int | None
    processors: Any
    text: str = ""  # the text emitted so far


class Generator:
    def __init__(self, model: Any, tokenizer: Any, tokenizing: threading.Lock, *,
                 max_batch: int, max_queue: int, max_tokens: int, name: str) -> None:
        self.model, self.tokenizer, self.tokenizing = model, tokenizer, tokenizing
        self.max_batch, self.max_queue, self.max_tokens = max_batch, max_queue, max_tokens
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = model.config.eos_token_id
        self.eos: set[int] = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.special: set[int] = set(tokenizer.all_special_ids)
        self.device = next(model.parameters()).device
        self._waiting: deque[Sequence] = deque()
        self._running: list[_Running] = []
        self._cache: Any = None  # the batch's key/value cache, rows as in _running
        self._mask: torch.Tensor | None = None  # [rows, columns]: 0 over left padding
        self._cond = threading.Condition()
        self._closed = False
        self.steps = 0  # decode steps run, for tests
        self.most_running = 0  # the largest batch a step ran, for tests
        self._thread = threading.Thread(target=self._loop, name=f"generator-{name}",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ callers' side

    def submit(self, seqs: list[Sequence]) -> None:
        """Queue all of a request's sequences, or none of them when there is no room."""
        with self._cond:
            if self._closed:
                raise Overloaded("the model is being unloaded")
            if len(self._waiting) + len(seqs) > self.max_queue:
                raise Overloaded(f"{len(self._waiting)} sequences are waiting for this model")
            self._waiting.extend(seqs)
            self._cond.notify()

    def close(self) -> None:
        """Refuse what waits; the running sequences finish."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    @property
    def running(self) -> int:
        return len(self._running)

    # ------------------------------------------------------------------ the loop

    def _admit(self) -> list[Sequence] | None:
        """The sequences that join at this step (None: closed and done)."""
        with self._cond:
            while not self._waiting and not self._running and not self._closed:
                self._cond.wait()
            if self._closed:
                refused, self._waiting = list(self._waiting), deque()
                for seq in refused:
                    seq.emit(Failed(Overloaded("the model is being unloaded")))
                return [] if self._running else None
            joining: list[Sequence] = []
            used = sum(r.seq.cost for r in self._running)
            while self._waiting and len(self._running) + len(joining) < self.max_batch:
                seq = self._waiting[0]
                if seq.cancelled:
                    self._waiting.popleft()
                    continue
                if used + seq.cost > self.max_tokens and (self._running or joining):
                    break  # waits for room: first come, first served
                joining.append(self._waiting.popleft())
                used += seq.cost
            return joining

    def _loop(self) -> None:
        while (joining := self._admit()) is not None:
            try:
                with torch.inference_mode():
                    for seq in joining:
                        if not seq.cancelled:
                            self._prefill(seq)
                    if self._running:
                        self._step()
            except Exception as exc:  # handed to every caller of the batch
                log.exception("generation failed")
                for row in self._running:
                    row.seq.emit(Failed(exc))
                for seq in joining:
                    if seq not in {r.seq for r in self._running}:
                        seq.emit(Failed(exc))
                self._running, self._cache, self._mask = [], None, None

    def _prefill(self, seq: Sequence) -> None:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        ids = torch.tensor([seq.prompt_ids], device=self.device)
        logits = self.model(input_ids=ids, cache=cache, use_cache=True).logits
        seed = seq.sampling.seed
        generator = None
        if seq.sampling.sample:
            seed = seed if seed is not None else random.getrandbits(32)
            generator = torch.Generator(device=self.device).manual_seed(seed)
        row = _Running(seq, list(seq.prompt_ids), [], generator, seed, _processors(seq.sampling))
        if self._choose(row, logits[0, -1:].float()):
            return  # done at its first token: never joins the batch
        self._join(row, cache)

    def _join(self, row: _Running, cache: Any) -> None:
        """Stack the new row's cache onto the batch's, both left-padded to the longer."""
        length = len(row.seq.prompt_ids)
        mask = torch.ones((1, length), dtype=torch.long, device=self.device)
        if self._cache is None or self._mask is None:
            self._cache, self._mask, self._running = cache, mask, [row]
            return
        width = max(self._mask.shape[1], length)
        for ours, theirs in zip(self._cache.layers, cache.layers, strict=True):
            ours.keys = torch.cat([_left_pad(ours.keys, width), _left_pad(theirs.keys, width)])
            ours.values = torch.cat([_left_pad(ours.values, width),
                                     _left_pad(theirs.values, width)])
        self._mask = torch.cat([_left_pad(self._mask, width, dim=1),
                                _left_pad(mask, width, dim=1)])
        self._running.append(row)

    def _step(self) -> None:
        """One new token for every running sequence."""
        assert self._mask is not None
        rows = self._running
        self.most_running = max(self.most_running, len(rows))
        ids = torch.tensor([[r.tokens[-1]] for r in rows], device=self.device)
        positions = torch.tensor([[len(r.tokens) - 1] for r in rows], device=self.device)
        mask = torch.cat([self._mask, torch.ones((len(rows), 1), dtype=torch.long,
                                                 device=self.device)], dim=1)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                            cache=self._cache, use_cache=True).logits
        self._mask = mask
        self.steps += 1
        scores = logits[:, -1].float()
        done = [i for i, row in enumerate(rows) if self._choose(row, scores[i:i + 1])]
        done += [i for i, row in enumerate(rows) if row.seq.cancelled and i not in done]
        if done:
            self._leave(sorted(done))

    def _leave(self, done: list[int]) -> None:
        assert self._mask is not None
        keep = [i for i in range(len(self._running)) if i not in done]
        self._running = [self._running[i] for i in keep]
        if not keep:
            self._cache, self._mask = None, None
            return
        index = torch.tensor(keep, device=self.device)
        mask = self._mask.index_select(0, index)
        # Columns that are padding in every remaining row are dropped.
        first = int((mask.sum(dim=0) > 0).nonzero()[0])
        self._mask = mask[:, first:]
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first:]
            layer.values = layer.values.index_select(0, index)[:, :, first:]

    def _choose(self, row: _Running, scores: torch.Tensor) -> bool:
        """Pick the row's next token from its logits [1, vocab] and emit it; whether the
        sequence has ended."""
        seq = row.seq
        if seq.cancelled:
            return True
        if row.processors:
            scores = row.processors(torch.tensor([row.tokens], device=self.device), scores)
        # A token filtered out (top-k, top-p) is -inf: a finite floor keeps answers JSON.
        logprobs = scores.log_softmax(dim=-1).clamp(min=-1e4)
        if row.generator is not None:
            token = int(torch.multinomial(logprobs.exp(), 1, generator=row.generator))
        else:
            token = int(scores.argmax(dim=-1))
        row.tokens.append(token)
        row.new.append(token)
        top: list[tuple[int, str, float]] = []
        if seq.top_n:
            values, indices = logprobs[0].topk(min(seq.top_n, logprobs.shape[-1]))
            top = [(i, self._decode([i]), p)
                   for i, p in zip(indices.tolist(), values.tolist(), strict=True)]
        reason = None
        if token in self.eos:
            reason = "eos_token"
        elif len(row.new) >= seq.max_new_tokens:
            reason = "length"
        text, stop_at = "", None
        if seq.token_text or seq.stop or reason is not None:
            text = self._decode(row.new)
            for stop in seq.stop:
                found = text.find(stop)
                if found >= 0 and (stop_at is None or found < stop_at):
                    stop_at = found
            if stop_at is not None:
                reason = "stop_sequence"
        piece = ""
        if text.startswith(row.text) and (reason is not None or not text.endswith("\ufffd")):
            piece, row.text = text[len(row.text):], text
        end = None if reason is None else Finished(reason, text, len(row.new), row.seed,
                                                    stop_at)
        seq.emit(Token(token, piece, float(logprobs[0, token]), token in self.special, top,
                       end))
        return end is not None

    def _decode(self, ids: list[int]) -> str:
        with self.tokenizing:  # the pipeline decodes so (NEW_TEXT): special tokens skipped
            return str(self.tokenizer.decode(ids, skip_special_tokens=True))


def _left_pad(t: torch.Tensor, width: int, dim: int = -2) -> torch.Tensor:
    """Zeros before the tensor's columns (keys/values: dim -2; masks: dim 1) up to `width`."""
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _processors(sampling: Sampling) -> Any:
    """transformers' own logits processors, as generate() builds them for these settings."""
    from transformers import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    chain = LogitsProcessorList()
    if sampling.repetition_penalty != 1.0:
        chain.append(RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty))
    if sampling.sample:
        if sampling.temperature != 1.0:
            chain.append(TemperatureLogitsWarper(sampling.temperature))
        if sampling.top_k is not None:
            chain.append(TopKLogitsWarper(sampling.top_k))
        if sampling.top_p < 1.0:
            chain.append(TopPLogitsWarper(sampling.top_p))
    return chain
