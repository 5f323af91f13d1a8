"""The teebus kernel: everything a component or adapter needs from the bus, and nothing of any system."""
