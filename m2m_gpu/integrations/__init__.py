"""Adapters for the frameworks people already use (each needs its extra)."""
