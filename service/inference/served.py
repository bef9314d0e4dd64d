"""A model loaded for serving: its transformers pipeline (whose pre- and post-processing keep
our answers in the pipeline's exact format), and a batched forward pass of our own.

The forward pass is the lean part: `torch.inference_mode`, sequences padded together by
length, and for fill-mask the MLM head applied only to the mask positions (as training does:
the head is a vocabulary-wide matrix, most of the cost of a small model's pass); for
feature extraction the hidden states pooled into one vector per sequence in the pass.
"""

import inspect
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch

from jobspec.pooling import Pooling
from service.inference import graph
from service.inference.batcher import Batcher
from service.inference.generation import Generator
from service.inference.graph import Pass
from service.settings import Settings

log = logging.getLogger("cloze.inference")

# Models whose position ids start after the padding id (fairseq's convention): their
# position table is pad_token_id + 1 rows longer than the texts they take.
OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "longformer"}
FEATURE_EXTRACTION = "feature-extraction"
BATCHED_TASKS = {"fill-mask", "text-classification", "token-classification", FEATURE_EXTRACTION}
GENERATION = "text-generation"  # served by its own decoding loop (generation.py)
# Tasks admitted by load (a bounded queue per model) rather than the per-minute budget.
LOAD_ADMITTED = BATCHED_TASKS | {GENERATION}
# Passes over at most this many tokens (padding included) run on one thread.
SMALL_PASS_TOKENS = 128


def max_tokens(config: Any) -> int:
    """The longest input, in tokens, that the model's position table covers."""
    positions = int(getattr(config, "max_position_embeddings", 512))
    if getattr(config, "model_type", None) in OFFSET_POSITIONS:
        positions -= int(getattr(config, "pad_token_id", None) or 0) + 1
    return positions


def model_bytes(model: Any) -> int:
    """Memory a loaded model holds: its parameters (tied ones once) and buffers."""
    return sum(t.numel() * t.element_size() for t in chain(model.parameters(), model.buffers()))


@dataclass
class Seq:
    """One sequence for the model: 1-D tensors by input name (input_ids, attention_mask, ...),
    and for fill-mask the positions whose predictions are wanted."""
    inputs: dict[str, torch.Tensor]
    select: list[int] | None = None

    def __len__(self) -> int:
        return int(self.inputs["input_ids"].shape[0])


def length_groups(lengths: Sequence[int]) -> list[list[int]]:
    """Indices grouped by length (shortest first) so that no group spends more than half
    of its work on padding: one 500-token text does not pad fifteen 12-token ones."""
    groups: list[list[int]] = []
    total = 0
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if groups and lengths[i] * (len(groups[-1]) + 1) <= 2 * (total + lengths[i]):
            groups[-1].append(i)
            total += lengths[i]
        else:
            groups.append([i])
            total = lengths[i]
    return groups


def mlm_head(model: Any) -> Any | None:
    """The masked-LM head, applied to hidden states of any shape: the one child module
    besides the encoder (BERT's `cls`, RoBERTa's `lm_head`); None when there is no such."""
    others = [m for name, m in model.named_children() if name != model.base_model_prefix]
    return others[0] if len(others) == 1 else None


def pool(hidden: torch.Tensor, length: int, modes: Sequence[str]) -> torch.Tensor:
    """One sequence's vector from its hidden states [T, H] (T >= length; positions past
    `length` are padding), as sentence-transformers' Pooling computes it; several modes are
    concatenated in the order of `modes`."""
    h = hidden[:length].float()
    parts = {"cls": lambda: h[0], "max": lambda: h.max(dim=0).values,
             "mean": lambda: h.mean(dim=0), "mean_sqrt_len": lambda: h.sum(dim=0) / length ** 0.5,
             "lasttoken": lambda: h[length - 1]}
    return torch.cat([parts[mode]() for mode in modes])


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class Served:
    def __init__(self, pipe: Any, task: str, settings: Settings,
                 pooling: Pooling | None = None, tokenizer_bytes: int = 0) -> None:
        self.pipe, self.task = pipe, task
        self.pooling = pooling or Pooling()
        self.tokenizer, self.model = pipe.tokenizer, pipe.model
        self.model.eval()
        config = self.model.config
        self.max_tokens: int = max_tokens(config)
        # The tokens one pass of a classifier reads: the length it was fine-tuned on (the
        # tokenizer's model_max_length, as the export keeps it) within its position table.
        # The pipeline's preprocessing cuts (and windows) texts at the tokenizer's figure.
        # An embedding model's is the sentence-transformers max_seq_length (what it was
        # trained to embed), where it says one.
        limit = self.tokenizer.model_max_length
        if task == FEATURE_EXTRACTION and self.pooling.max_seq_length is not None:
            limit = self.pooling.max_seq_length
        self.window = min(self.max_tokens, int(limit)) if limit < 1e9 else self.max_tokens
        self.tokenizer.model_max_length = self.window
        # The width of the output layer: fill-mask's top_k can be no larger.
        self.vocab_size: int = int(getattr(config, "vocab_size", 0) or len(self.tokenizer))
        # What the model cache counts: weights, buffers and the tokenizer's estimate.
        self.nbytes = model_bytes(self.model) + tokenizer_bytes
        self.device = torch.device(pipe.device)
        # Tensor threads for large passes: as configured, not torch's current figure, which
        # another model's small pass may have just set to 1.
        self.threads = settings.inference_threads or len(os.sched_getaffinity(0))
        self.lock = threading.Lock()  # question answering's reader: one call at a time
        # A fast tokenizer keeps its truncation and padding settings in one Rust object that
        # each call may reset ("Already borrowed" when two threads do): one call at a time.
        self.tokenizing = threading.Lock()
        accepted = inspect.signature(self.model.forward).parameters
        self.input_names = [n for n in self.tokenizer.model_input_names if n in accepted]
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        self.head = mlm_head(self.model) if task == "fill-mask" else None
        # Passes that give hidden states: fill-mask's encoder, feature extraction's model.
        self.hidden_states = self.head is not None or task == FEATURE_EXTRACTION
        if task == FEATURE_EXTRACTION and hasattr(config, "use_cache"):
            config.use_cache = False  # a decoder's key/value cache: not wanted, not traceable
        # Fill-mask looks targets up in the vocabulary (built once: get_vocab() copies it).
        self.vocab: dict[str, int] = self.tokenizer.get_vocab() if task == "fill-mask" else {}
        self.dtype = torch.float32
        # The pass the batches run: fill-mask's encoder (hidden states; the head runs on the
        # mask rows alone), else the whole model (logits). Eager until prepare() traces it.
        self._module: torch.nn.Module = (self.model.base_model if self.head is not None
                                          else self.model)
        self._pass: Pass = self._eager
        self.graph = "eager"
        self.batcher: Batcher | None = None
        if task in BATCHED_TASKS:
            self.batcher = Batcher(self.forward, max_batch=settings.inference_max_batch,
                                   max_wait_s=settings.inference_max_wait_ms / 1000,
                                   max_queue=settings.inference_max_queue,
                                   name=str(getattr(config, "name_or_path", task)))
        self.generator: Generator | None = None
        if task == GENERATION:
            self.generator = Generator(self.model, self.tokenizer, self.tokenizing,
                                       max_batch=settings.generate_max_batch,
                                       max_queue=settings.generate_max_queue,
                                       max_tokens=settings.generate_max_tokens,
                                       name=str(getattr(config, "name_or_path", task)))

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        if self.generator is not None:
            self.generator.close()

    # ------------------------------------------------------------------ the forward pass

    def forward(self, seqs: list[Seq]) -> list[torch.Tensor]:
        """Each sequence's output: fill-mask, softmax rows at its selected positions
        [len(select), vocab]; feature extraction, its pooled vector (float32, not
        normalised); otherwise the model's logits for it, [1, ...] as the pipeline hands them
        to its post-processing (token logits cut to the sequence's length)."""
        out: list[torch.Tensor] = [torch.empty(0)] * len(seqs)
        with torch.inference_mode():
            for group in length_groups([len(s) for s in seqs]):
                for i, result in zip(group, self._forward([seqs[i] for i in group]),
                                     strict=True):
                    out[i] = result
        return out

    def _pad(self, seqs: list[Seq]) -> dict[str, torch.Tensor]:
        """The sequences as one batch, padded to the longest, on the model's device."""
        width = max(len(s) for s in seqs)
        batch = {name: torch.zeros((len(seqs), width), dtype=torch.long)
                 for name in self.input_names}
        batch["input_ids"].fill_(self.pad_id)
        for row, seq in enumerate(seqs):
            n = len(seq)
            for name, values in seq.inputs.items():
                if name in batch:
                    batch[name][row, :n] = values
            if "attention_mask" not in seq.inputs and "attention_mask" in batch:
                batch["attention_mask"][row, :n] = 1
        return {name: t.to(self.device) for name, t in batch.items()}

    def _forward(self, seqs: list[Seq]) -> list[torch.Tensor]:
        batch = self._pad(seqs)
        # A small pass runs faster on one thread: splitting a 16-token matrix product
        # costs more in synchronisation than it saves (BERT-mini, one sentence: 2.9 ms on
        # one thread, 5.8 ms on two; BERT-base-sized: 45 vs 57 ms); large batches use them
        # all. torch's setting is process-wide: each pass sets it for itself.
        tokens = batch["input_ids"].numel()
        torch.set_num_threads(1 if tokens <= SMALL_PASS_TOKENS else self.threads)
        if self.head is not None:
            hidden = self._pass(batch)
            rows = [torch.tensor(s.select or [], dtype=torch.long) for s in seqs]
            which = torch.cat([torch.full_like(r, i) for i, r in enumerate(rows)])
            picked = hidden[which.to(self.device), torch.cat(rows).to(self.device)]
            probs = self.head(picked).float().softmax(dim=-1).cpu()
            return list(probs.split([len(r) for r in rows]))
        if self.task == FEATURE_EXTRACTION:
            hidden = self._pass(batch).cpu()
            return [pool(hidden[i], len(s), self.pooling.modes) for i, s in enumerate(seqs)]
        logits = self._pass(batch).float().cpu()
        if logits.dim() == 3:  # per token
            return [logits[i:i + 1, :len(s)] for i, s in enumerate(seqs)]
        return [logits[i:i + 1] for i in range(len(seqs))]

    def _eager(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        output = self._module(**batch)
        return output.last_hidden_state if self.hidden_states else output.logits

    # ------------------------------------------------------------------ loading

    def prepare(self, settings: Settings, warm_up: list[Seq]) -> None:
        """Choose the precision, then run the warm-up sequences once at batch size 1 and
        once all together, so the first request after loading is as fast as the ones after
        it (the first passes pay for allocations and kernel choices)."""
        if self.head is not None and settings.inference_precision != "fp32":
            if settings.inference_precision == "bf16" or native_bf16(self.device):
                self._try_bf16(warm_up, forced=settings.inference_precision == "bf16")
        if self.batcher is not None and settings.inference_graph == "trace":
            self._trace()
        if self.batcher is not None:
            self.forward(warm_up[:1])
            self.forward(warm_up)

    def _trace(self) -> None:
        """Serve the pass as a traced graph if it answers as the eager one does on batches
        of 1 and several sequences, padded or not, up to the window's length."""
        example = self._batch([7, 12])
        checks = [self._batch(lengths) for lengths in
                  ([5], [16], [3, 11], [1, 40, 2], [min(self.window, 512)])]
        tolerance = 1e-4 if self.dtype == torch.float32 else 2e-2
        traced = graph.trace(self._module, self._eager, example, checks, tolerance)
        if traced is not None:
            self._pass, self.graph = traced, "traced"
            # Freezing folds copies of the weights into the graph.
            self.nbytes += model_bytes(self._module)

    def _batch(self, lengths: list[int]) -> dict[str, torch.Tensor]:
        """A padded batch of arbitrary tokens with these lengths, as _forward builds them."""
        generator = torch.Generator().manual_seed(len(lengths))
        return self._pad([Seq({"input_ids": torch.randint(0, self.vocab_size, (n,),
                                                          generator=generator)})
                          for n in lengths])

    def _try_bf16(self, warm_up: list[Seq], *, forced: bool) -> None:
        """bf16 halves the weights' memory traffic; kept unless it changes the top-5."""
        reference = self.forward(warm_up)
        self.model.to(torch.bfloat16)
        self.dtype = torch.bfloat16
        if forced:
            return
        same = all(torch.equal(a.topk(5).indices, b.topk(5).indices)
                   for a, b in zip(reference, self.forward(warm_up), strict=True))
        if not same:
            log.info("bf16 changes this model's top-5 predictions: serving it in fp32")
            self.model.to(torch.float32)
            self.dtype = torch.float32
