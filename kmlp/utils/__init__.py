"""Helpers every stage may use: whole-or-nothing file writes, two numeric helpers, quiet TensorFlow."""
