"""Resuming: which state, is it whole, does it fit this run, all checked before it loads."""
