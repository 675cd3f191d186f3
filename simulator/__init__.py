"""Ember chip simulator: chip spec, ISA, functional and timing engines."""
