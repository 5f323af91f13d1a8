"""Aurae's October 2022 gRPC API (meta, observe, runtime, schedule): the .proto files and their
generated stubs, committed so that running teebus needs no protoc. Regenerate with
`python -m components.aurae.protos.regenerate`."""
