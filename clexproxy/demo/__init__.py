"""Demo mode: a deterministic OpenAI-style upstream (`start_demo_upstream`) and the demo key (`ensure_demo_key`)."""
