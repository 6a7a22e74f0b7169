"""Thin adapters, one folder per ecosystem; installed as ``owl_plugin.integrations``.

Each adapter imports its framework and the core (``owl_plugin``); the core never imports them.
"""
