"""Thin translators from documented external endpoints to bus requests: no state, no business rule."""
