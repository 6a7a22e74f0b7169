"""llmcompressor adapter (filled in by the recipe-modifier work)."""
