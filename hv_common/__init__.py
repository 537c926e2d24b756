"""Leaf utilities shared by every package (imports nothing from the project)."""
