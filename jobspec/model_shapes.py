"""Model shapes: one set of size presets for every architecture."""

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from jobspec.common import Strict

ENCODERS = ("bert", "roberta")  # bidirectional, trained by masked-LM
DECODERS = ("gpt2", "llama")  # causal, trained by next-token prediction
ARCHITECTURES = ENCODERS + DECODERS
Architecture = Literal["bert", "roberta", "gpt2", "llama"]

# The BERT miniatures (Turc et al., 2019): size -> (layers, hidden size); heads = hidden/64.
SIZE_PRESETS: dict[str, tuple[int, int]] = {
    "tiny": (2, 128), "mini": (4, 256), "small": (4, 512), "medium": (8, 512), "base": (12, 768),
}
HEAD_DIM = 64


@dataclass(frozen=True)
class Shape:
    """A model's resolved dimensions."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int


class ModelSpec(Strict):
    architecture: Architecture = "bert"
    size: Literal["tiny", "mini", "small", "medium", "base"] = "mini"
    hidden_size: int | None = Field(default=None, ge=16, le=4096)
    num_layers: int | None = Field(default=None, ge=1, le=48)
    num_heads: int | None = Field(default=None, ge=1, le=64)
    # Grouped-query attention (llama only): fewer key/value heads than query heads.
    num_key_value_heads: int | None = Field(default=None, ge=1, le=64)
    intermediate_size: int | None = Field(default=None, ge=16, le=16384)
    max_position_embeddings: int = Field(default=512, ge=16, le=8192)
    # Whether the output layer shares the input embeddings' weights. None: untied for the
    # masked LMs, tied for the causal ones (as GPT-2 and small Llamas). Tied, the masked
    # LM's output gradient grows the word embeddings until they drown the position
    # embeddings, and the encoder stays a bag of words far longer (BERT-mini: held-out
    # loss 4.79 untied vs 5.68 tied after 1,000 steps; bench/README.md, "Untied
    # embeddings").
    tie_embeddings: bool | None = None

    def ties_embeddings(self) -> bool:
        """tie_embeddings as given, else the architecture's default."""
        if self.tie_embeddings is not None:
            return self.tie_embeddings
        return self.architecture in DECODERS

    def shape(self) -> Shape:
        """Dimensions after explicit values override the preset."""
        layers, hidden = SIZE_PRESETS[self.size]
        layers = self.num_layers or layers
        hidden = self.hidden_size or hidden
        heads = self.num_heads or max(1, hidden // HEAD_DIM)
        if self.intermediate_size:
            ffn = self.intermediate_size
        elif self.architecture == "llama":
            # SwiGLU has three matrices where GELU has two: 8/3 x hidden keeps the FFN's
            # parameter count at that of 4 x hidden (as LLaMA does), rounded to 32.
            ffn = -(-8 * hidden // 3 // 32) * 32
        else:
            ffn = 4 * hidden
        return Shape(layers, hidden, heads, self.num_key_value_heads or heads, ffn)

    def inconsistency(self) -> tuple[str, str] | None:
        shape = self.shape()
        if shape.hidden % shape.heads:
            return ("model.num_heads",
                    f"hidden size {shape.hidden} is not a multiple of the number of heads "
                    f"{shape.heads}")
        if self.num_key_value_heads is not None:
            if self.architecture != "llama":
                return ("model.num_key_value_heads",
                        "grouped-query attention is available for llama only")
            if shape.heads % shape.kv_heads:
                return ("model.num_key_value_heads",
                        f"{shape.heads} heads cannot be shared among {shape.kv_heads} "
                        "key/value heads; use a divisor")
        return None
