"""The served forward pass as one TorchScript graph, when it gives the same answers.

A small model's eager pass is mostly Python, not arithmetic: transformers' modules, hooks
and decorators cost ~10 ms per call of a 4-layer BERT on ~16 tokens, 2-3x the matrix work
(bench/serve_profile.py). Tracing the pass once at load and freezing it (weights folded in,
`optimize_for_inference`) runs the same operators without that overhead.

`torch.jit.trace` is deprecated in favour of `torch.compile`, which took ~1 min per model
on a 2-core CPU plus a recompile per new shape class: too slow for a model loaded on first
use. The traced graph is checked against the eager pass on several batch shapes (with and
without padding, short and window-long) before it is used, and the eager pass stays when
tracing fails or any answer differs.
"""

import logging
import warnings
from collections.abc import Callable

import torch

log = logging.getLogger("cloze.inference")

Batch = dict[str, torch.Tensor]
Pass = Callable[[Batch], torch.Tensor]


def _first(output: object) -> torch.Tensor:
    """The traced graph returns the model output's first field (hidden states or logits)
    as a tuple or dict element."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return next(iter(output.values()))
    assert isinstance(output, (tuple, list))
    return output[0]


def _agrees(eager: Pass, traced: Pass, batch: Batch, tolerance: float) -> bool:
    """Equal on every real (not padding) position, within `tolerance` of the largest value."""
    want, got = eager(batch), traced(batch)
    if want.shape != got.shape:
        return False
    keep = batch["attention_mask"].bool() if want.dim() == 3 else None
    a, b = (want[keep], got[keep]) if keep is not None else (want, got)
    scale = float(a.abs().max()) or 1.0
    return float((a.float() - b.float()).abs().max()) <= tolerance * scale


def trace(module: torch.nn.Module, eager: Pass, example: Batch, checks: list[Batch],
          tolerance: float) -> Pass | None:
    """`module` traced on `example` (a padded batch, so the attention mask's path is in the
    graph) and frozen; None when that fails or disagrees with `eager` on any of `checks`."""
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deprecation and tracer warnings
            graph = torch.jit.trace(module, example_kwarg_inputs=example, strict=False,
                                    check_trace=False)
            graph = torch.jit.optimize_for_inference(torch.jit.freeze(graph.eval()))

        def traced(batch: Batch) -> torch.Tensor:
            return _first(graph(**batch))  # by name: the graph's order is forward()'s

        with torch.inference_mode():
            if all(_agrees(eager, traced, batch, tolerance) for batch in checks):
                return traced
        log.info("the traced graph's answers differ from the eager pass: serving eagerly")
    except Exception as exc:  # any model the tracer cannot follow is served eagerly
        log.info("tracing failed (%s): serving eagerly", exc.__class__.__name__)
    return None
