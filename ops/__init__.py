"""The op library: one module per op family, each registering its aten targets."""
