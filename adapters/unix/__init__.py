"""Unix-socket adapters (keepldr sockets, the Aurae gRPC socket) and their shared server base."""
