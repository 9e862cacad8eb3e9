"""Rendering an analysis for people (text) and machines (JSON)."""
