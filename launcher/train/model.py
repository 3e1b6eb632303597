"""Model and tokenizer from a Hub id or a local Hugging Face directory."""

from __future__ import annotations

from launcher.recipe.schema import Recipe


def load_tokenizer(recipe: Recipe):
    from transformers import AutoTokenizer

    spec = recipe.model
    return AutoTokenizer.from_pretrained(spec.tokenizer or spec.name_or_path, revision=spec.revision)


def load_model(recipe: Recipe):
    from transformers import AutoModelForSequenceClassification

    spec = recipe.model
    return AutoModelForSequenceClassification.from_pretrained(
        spec.name_or_path, num_labels=spec.num_labels, revision=spec.revision
    )
