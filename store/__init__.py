"""Parley store."""
