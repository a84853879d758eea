"""The example config's Anthropic and Gemini providers and their models, uncommented as a user would, must build.

They ship commented out (a copied example must not list models whose provider the operator has no key for),
so the example's own load does not check them: this does, block by block, as the comments tell a user to
uncomment them. The live legacy-completions flag (`completions = true` on the Ollama model) is checked here too.
"""

from __future__ import annotations

from pathlib import Path

from clexproxy.config import load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "clexproxy.example.toml"
BLOCKS = ('[providers.anthropic]', '[providers.gemini]', '[models."anthropic/claude-sonnet-4-5"]',
          '[models."google/gemini-2.5-flash"]')


def uncommented(text: str, head: str) -> str:
    """The commented-out table that starts at `# <head>`, up to the first line that is not a comment."""
    lines = text.splitlines()
    start = lines.index(f"# {head}")
    block = []
    for line in lines[start:]:
        if not line.startswith("# "):
            break
        block.append(line.removeprefix("# "))
    return "\n".join(block) + "\n"


def test_the_anthropic_and_gemini_examples_build(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    config = tmp_path / "clexproxy.toml"
    config.write_text(text + "\n" + "".join(uncommented(text, head) for head in BLOCKS), encoding="utf-8")
    catalog = load_settings(config, env={}).catalog
    anthropic, gemini = catalog.providers["anthropic"], catalog.providers["gemini"]
    assert (anthropic.format, anthropic.base_url, anthropic.api_key_env) == (
        "anthropic", "https://api.anthropic.com/v1", "ANTHROPIC_API_KEY")
    assert (gemini.format, gemini.base_url, gemini.api_key_env) == (
        "gemini", "https://generativelanguage.googleapis.com/v1beta", "GEMINI_API_KEY")
    claude, flash = catalog.models["anthropic/claude-sonnet-4-5"], catalog.models["google/gemini-2.5-flash"]
    assert [(d.provider, d.model) for d in claude.deployments] == [("anthropic", "claude-sonnet-4-5")]
    assert [(d.provider, d.model) for d in flash.deployments] == [("gemini", "gemini-2.5-flash")]
    assert claude.kind == flash.kind == "chat" and not claude.completions and not flash.completions
    assert claude.use_case and flash.use_case


def test_the_example_flags_a_model_for_legacy_completions() -> None:
    catalog = load_settings(EXAMPLE, env={}).catalog
    assert catalog.models["ollama/llama3.2-3b"].completions
    assert not catalog.models["meta/llama-3.1-8b-instruct"].completions
    assert all(m.id == "ollama/llama3.2-3b" or not m.completions for m in catalog.models.values())
