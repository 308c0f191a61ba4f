"""Per-session call analysis: OpenAI structured outputs, or a labelled offline fallback."""
