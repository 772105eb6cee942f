"""Data sets: real formats and the embedded generated defaults."""
