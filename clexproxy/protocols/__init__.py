"""Translations between the protocols clients speak, the formats providers speak, and chat completions between them."""
