"""Reference models and model builders, reachable as SPECs (`models:NAME`).

`load_model("models:multimodal-tiny")` or `load_model("path/to/file.py:factory")` returns
`(model, example_inputs)`; `list_models()` names what is registered; `@register_model("name")`
registers a factory. The Hugging Face models (`models:hf-*`, see `models/huggingface.py`) are
registered where `transformers` (a test extra) is installed.
"""

import importlib.util

# Imported for their registrations.
from models import cnn, multimodal, trained_lm  # noqa: F401
from models.registry import list_models, load_model, register_model

# Looked up, not imported: importing transformers takes seconds, paid only when an hf model is built.
if importlib.util.find_spec("transformers") is not None:
    from models import huggingface, llama_meta, moe_meta  # noqa: F401

__all__ = ["list_models", "load_model", "register_model"]
