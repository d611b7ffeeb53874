"""Parley jobs."""
