"""Text helpers for speech output (``chunker``: LLM deltas -> speakable clauses)."""
