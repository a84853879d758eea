"""A model's use case: catalog data, shipped for every model, set or changed by a `[models."ID"]` table,
checked like the other fields, and carried by `model_object` (so /v1/models, /api/credits/pricing's page
and the Models page read one source).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from clexproxy.catalog import DEFAULT_MODELS, Model, default_catalog
from clexproxy.catalog_tables import USE_CASE_LIMIT, CatalogError, build_catalog
from clexproxy.config import ConfigError, load_settings
from clexproxy.handlers.models import model_object

LLAMA = "meta/llama-3.1-8b-instruct"
EMBED = "nvidia/nv-embedqa-e5-v5"


def build(text: str) -> dict[str, Model]:
    return dict(build_catalog(tomllib.loads(text), default_catalog()).models)


def test_every_shipped_model_has_a_short_use_case() -> None:
    for mid, model in DEFAULT_MODELS.items():
        text = model.use_case
        assert text and text == text.strip() and "\n" not in text, mid
        assert len(text) <= 50, (mid, text)
        assert not text.endswith("."), (mid, text)  # a table cell, not a sentence
    assert "embedding" in DEFAULT_MODELS[EMBED].use_case.lower()
    assert "cod" in DEFAULT_MODELS["qwen/qwen3-coder-480b-a35b-instruct"].use_case.lower()


def test_model_object_carries_the_use_case() -> None:
    catalog = default_catalog()
    for model in catalog.models.values():
        assert model_object(model, catalog)["use_case"] == model.use_case
    bare = Model("x/y", "cheap", 1024, 256, ())
    assert bare.use_case == "" and model_object(bare, catalog)["use_case"] == ""


def test_a_table_sets_or_keeps_the_use_case() -> None:
    models = build(f"""
[models."local/tiny"]
use_case = "  Tiny local chat,\\n  for tests  "
deployments = [{{ provider = "nvidia", model = "tiny" }}]

[models."local/plain"]
deployments = [{{ provider = "nvidia", model = "plain" }}]

[models."{LLAMA}"]
context_length = 8192

[models."{EMBED}"]
use_case = "Retrieval embeddings"
""")
    assert models["local/tiny"].use_case == "Tiny local chat, for tests"  # one line, whatever the TOML layout
    assert models["local/plain"].use_case == ""
    assert models[LLAMA].use_case == DEFAULT_MODELS[LLAMA].use_case  # only the keys given change
    assert models[LLAMA].context_length == 8192
    assert models[EMBED].use_case == "Retrieval embeddings"
    assert build(f'[models."{EMBED}"]\nuse_case = ""\n')[EMBED].use_case == ""  # "" clears it


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("42", "use_case must be a string, got 42"),
        ("true", "use_case must be a string, got True"),
        ('["chat"]', "use_case must be a string, got ['chat']"),
        (f'"{"x" * (USE_CASE_LIMIT + 1)}"', f"use_case must be at most {USE_CASE_LIMIT} characters"),
    ],
)
def test_a_bad_use_case_names_its_table(value: str, words: str) -> None:
    with pytest.raises(CatalogError) as info:
        build(f'[models."{LLAMA}"]\nuse_case = {value}\n')
    message = str(info.value)
    assert message.startswith(f'[models."{LLAMA}"]: ') and words in message, message


def test_a_bad_use_case_in_a_settings_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "clex.toml"
    path.write_text(f'[models."{LLAMA}"]\nuse_case = 7\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert "use_case" in str(info.value)
    path.write_text(f'[models."{LLAMA}"]\nuse_case = "Cheap chat"\n', encoding="utf-8")
    assert load_settings(path, env={}).catalog.models[LLAMA].use_case == "Cheap chat"


def test_the_example_config_documents_and_sets_use_case() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "clexproxy.example.toml"
    models = load_settings(example, env={}).catalog.models
    assert models["ollama/llama3.2-3b"].use_case
    assert "use_case" in example.read_text(encoding="utf-8")
