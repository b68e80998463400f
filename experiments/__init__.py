"""Experiments that use remit end to end (not part of the installed package)."""
