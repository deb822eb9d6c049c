"""Provider adapters: one batch API each (Anthropic first)."""
