"""Aurae: the runtime, observe and schedule subsystems of Aurae's October 2022 gRPC API."""
