"""Reference models and model builders, reachable as SPECs (`models:NAME`).

`load_model("models:multimodal-tiny")` or `load_model("path/to/file.py:factory")` returns
`(model, example_inputs)`; `list_models()` names what is registered; `@register_model("name")`
registers a factory.
"""

from models.registry import list_models, load_model, register_model

# Imported for their registrations.
from models import cnn, multimodal  # noqa: F401

__all__ = ["list_models", "load_model", "register_model"]
