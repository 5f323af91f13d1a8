"""Enarx: keep manager, keep loaders and Wasm loaders."""
