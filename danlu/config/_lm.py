"""The ``language_model:`` block of ``task: language_model`` recipes: which text, which
documents, the tokenizer's size and the report's baselines and samples::

    task: language_model
    data: {source: builtin:bbc_news}          # or a CSV/Parquet/JSONL file, or a folder of .txt
    language_model:
      text: text                 # the text column (a folder of .txt files: one document per file)
      vocab_size: 4096           # the byte-level BPE vocabulary, trained on the training split
      where: {category: sport}   # keep the documents whose column holds this value (or values)
      order: 5                   # the Kneser-Ney n-gram baseline's order
      near_duplicates: 0.5       # documents sharing half their 8-word shingles stay in one split
      eval_stride: 64            # validation/test blocks slide by 64 (default: half the context)
      samples: {temperatures: [0.7, 1.0], tokens: 48}   # generated samples in the report
    model: {type: gpt, context: 128}

Every document goes whole into one split (``data.split.val`` / ``test`` are shares of documents,
shuffled with ``data.split.seed``). A fine-tuned model (``model.base``) tokenizes with its base's
tokenizer, so ``vocab_size`` is not read then.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LanguageModelConfig", "SamplesConfig"]

Value = str | int | float | bool


class SamplesConfig(BaseModel):
    """The generated samples the trust report shows (seeded, one per temperature)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    temperatures: list[Annotated[float, Field(ge=0.0, le=5.0)]] = Field(
        default_factory=lambda: [0.7, 1.0],
        max_length=8,
        description="One sample per temperature (0 = greedy); empty: no samples.",
    )
    tokens: Annotated[int, Field(ge=1, le=1024)] = Field(48, description="New tokens per sample.")
    prompt: str = Field(
        "", description="The text each sample continues (empty: the start of a test document)."
    )


class LanguageModelConfig(BaseModel):
    """``task: language_model``'s corpus, tokenizer and report settings."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    text: Annotated[str, Field(min_length=1)] = Field(
        "text",
        description="The column holding each document's text (not read for a folder of .txt "
        "files, whose files are the documents).",
    )
    vocab_size: Annotated[int, Field(ge=1)] = Field(
        4096,
        description="Byte-level BPE vocabulary size (256 bytes + the end-of-document token at "
        "least), trained on the training documents.",
    )
    where: dict[str, Value | list[Value]] | None = Field(
        None,
        description="Keep only the documents whose column holds this value (or one of these "
        "values), e.g. {category: sport}: a narrower corpus to fine-tune on.",
    )
    order: Annotated[int, Field(ge=1, le=8)] = Field(
        5, description="The order of the interpolated Kneser-Ney n-gram baseline."
    )
    near_duplicates: Annotated[float, Field(gt=0.0, le=1.0)] | None = Field(
        0.5,
        description="Documents that share at least this share of their 8-word shingles (of the "
        "shorter one's) go to the same split, as identical documents do: held-out text is not "
        "seen in training under another document's name. null: identical documents only.",
    )
    eval_stride: Annotated[int, Field(ge=1)] | None = Field(
        None,
        description="Stride of the validation and test blocks (a sliding window): a block "
        "after the first scores only its last eval_stride targets, so every scored token has "
        "at least model.context - eval_stride tokens of history. Default: half the context; "
        "model.context: blocks that do not overlap.",
    )
    samples: SamplesConfig = Field(
        default_factory=SamplesConfig, description="Generated samples in the trust report."
    )
