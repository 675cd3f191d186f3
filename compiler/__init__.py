"""Ember compiler: capture (torch.export), the `ember` MLIR dialect, importer, passes, codegen."""
