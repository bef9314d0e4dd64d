"""The README.md model card every export (and every checkpoint) carries: what the model is,
what it was trained on and how, its last evaluation, and how to load it with transformers.
The YAML header is the Hugging Face Hub's model-card metadata, so the directory can be
pushed to a hub as it is."""

from typing import Any

from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from jobspec.model_facts import (
    FILL_MASK,
    QUESTION_ANSWERING,
    TEXT_GENERATION,
    auto_class,
    pipeline_task,
)
from jobspec.pooling import Pooling

OBJECTIVES = {
    "mlm": "masked language modelling (as BERT and RoBERTa)",
    "mlm_nsp": "masked language modelling with next-sentence prediction (BERT's original pair "
               "task)",
    "clm": "causal language modelling (next-token prediction, as GPT and Llama)",
}


ADAPTERS = {"lora": "LoRA", "adalora": "AdaLoRA"}
# What a fine-tuning task's outputs mean and how it is scored.
TASK_NOTES = {
    "text_classification": "scored by accuracy and macro-F1; texts alone or in pairs "
                           '(`{"text", "text_pair"}`)',
    "regression": "one output, the predicted number (problem_type regression, MSE loss); "
                  "scored by MSE, Pearson and Spearman",
    "multi_label_classification": "a sigmoid per label (problem_type "
                                  "multi_label_classification); scored by micro- and "
                                  "macro-F1 at the decision threshold in config.json's "
                                  "`cloze_threshold` (the best validation micro-F1)",
}


def serves_embeddings(spec: dict[str, Any], architecture: str) -> bool:
    """Whether the model is an encoder, whose mean-pooled last hidden states Cloze serves
    as embeddings (and whose export carries the sentence-transformers files saying so): a
    masked LM pretrained here, or a classifier fine-tuned from an encoder (an architecture
    that masked LM trains: BERT, RoBERTa, ...), not a causal LM or a classifier on one."""
    if spec.get("type") == "finetune":
        return architecture in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    return spec.get("objective") != "clm"


def model_card(*, spec: dict[str, Any], step: int, total_steps: int, tokens_seen: int,
               num_parameters: int, evaluation: dict[str, Any] | None,
               mask_token: str | None, architecture: str, pooling: Pooling | None = None
               ) -> str:
    """The card; pooling: what the directory's sentence-transformers files say (an export
    of an encoder; checkpoints have none: mean pooling)."""
    task = pipeline_task(spec)
    finetune = spec.get("type") == "finetune"
    done = "finished" if step >= total_steps else f"a checkpoint: step {step} of {total_steps}"
    tags = ", ".join(["cloze", architecture] + (["sentence-transformers"] if pooling
                                                 else []))
    lines = ["---", "library_name: transformers", f"pipeline_tag: {task}",
             f"tags: [{tags}]", "---", ""]
    title = spec.get("name") or (f"{architecture} fine-tuned for {task}" if finetune
                                 else f"{architecture} pretrained by {spec.get('objective')}")
    lines += [f"# {title}", "",
              f"A {architecture} model of {num_parameters:,} parameters, trained with Cloze "
              f"({done}).", "", "## Training", ""]
    if finetune:
        adapter = (spec.get("adapter") or {}).get("type")
        lines += [f"- task: {spec.get('task')}, from base model `{spec.get('base_model_id')}`"
                  + (f" with {ADAPTERS.get(adapter, adapter)} adapters (merged into this model)"
                     if adapter else "")]
        if spec.get("task") in TASK_NOTES:
            lines += [f"- {TASK_NOTES[spec['task']]}"]
    else:
        objective = spec.get("objective", "")
        lines += [f"- objective: {OBJECTIVES.get(objective, objective)}"]
        if spec.get("base_model_id"):
            lines += [f"- continued from model `{spec['base_model_id']}`"]
        tok = spec.get("tokenizer") or {}
        lines += ["- tokenizer: the base model's (from_model)" if tok.get("type") == "from_model"
                  else f"- tokenizer: {tok.get('type')}, {tok.get('vocab_size')} entries"
                  + (", lowercased" if tok.get("lowercase") else "")]
    lines += [f"- data: dataset `{spec.get('dataset_id')}`; {tokens_seen:,} tokens seen in "
              f"{step:,} steps", "", "| hyperparameter | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in (spec.get("hyperparameters") or {}).items()
              if v is not None]
    lines += ["", "## Evaluation", ""]
    if evaluation:
        lines += [f"On the held-out data at step {evaluation.get('step', step)}:", "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                  for k, v in evaluation.items() if k not in ("step", "probes")]
        if evaluation.get("probes"):
            lines += ["", "Cloze probes (the expected answer's rank and probability, and the "
                      "model's top 5):", "", "| probe | expected | rank | probability | top 5 |",
                      "|---|---|---:|---:|---|"]
            for p in evaluation["probes"]:
                top = ", ".join(t["token"] for t in p["top"])
                probability = "" if p["probability"] is None else f"{p['probability']:.4f}"
                lines += [f"| {_cell(p['text'])} | {_cell(p['expected'])} | {p['rank']} | "
                          f"{probability} | {_cell(top)} |"]
    else:
        lines += ["Not evaluated yet."]
    if serves_embeddings(spec, architecture):
        lines += ["", "## Embeddings", "",
                  f"An encoder: it also embeds texts, as {(pooling or Pooling()).sentence()}. "
                  "Cloze serves them at `POST /v1/models/{id}/feature-extraction` (the "
                  "Hugging Face Inference API's format; `normalize` overrides) and at "
                  "OpenAI's `POST /v1/embeddings` (`\"model\": \"<this model's id>\"`; "
                  "unit length)" + (
                      "; the directory's `modules.json` and `1_Pooling/config.json` say the "
                      "same to sentence-transformers: "
                      '`SentenceTransformer("path/to/this/directory").encode(texts)`.'
                      if pooling else ".")]
    if task == QUESTION_ANSWERING:  # transformers 5 has no question-answering pipeline
        lines += ["", "## How to use", "", "```python",
                  "from transformers import AutoModelForQuestionAnswering, AutoTokenizer", "",
                  'model = AutoModelForQuestionAnswering.from_pretrained("path/to/this/directory")',
                  'tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")',
                  'inputs = tokenizer("Who sat?", "The cat sat on the mat.", return_tensors="pt")',
                  "out = model(**inputs)  # start_logits, end_logits: the answer's ends",
                  "", "# transformers 4: pipeline(\"question-answering\", "
                  'model="path/to/this/directory")',
                  "```", ""]
        return "\n".join(lines)
    example = {FILL_MASK: f'"Paris is the {mask_token or "[MASK]"} of France."',
               TEXT_GENERATION: '"Once upon a time"'}.get(task, '"A text to label."')
    lines += ["", "## How to use", "", "```python",
              "from transformers import pipeline", "",
              f'pipe = pipeline("{task}", model="path/to/this/directory")',
              f"print(pipe({example}))", "",
              f"# or: from transformers import {auto_class(task)}, AutoTokenizer", "```", ""]
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Text inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")
