"""Cyborg: accelerator discovery (drivers), health, and the driver's `GET /hardware` (seed: cyborg-internal-api.rst)."""
