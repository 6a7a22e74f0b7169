"""Checkpoint formats: the compact sparse format's codec and config (see SPEC.md)."""
