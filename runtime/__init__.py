"""Ember runtime: Program loading, sessions and device backends."""
