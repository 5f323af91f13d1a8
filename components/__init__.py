"""One package per system; components talk to each other only over subjects."""
