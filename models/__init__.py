"""Reference models and model builders, reachable as SPECs (`models:NAME`)."""
