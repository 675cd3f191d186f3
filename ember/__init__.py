"""Ember: compile PyTorch models for an MTIA-style accelerator and simulate them."""
