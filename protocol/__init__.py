"""Parley protocol."""
