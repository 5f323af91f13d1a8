"""One module per system: documented HTTP endpoint -> bus request -> documented reply."""
