"""Conclave: the web host's enclave, durable mailboxes and a key derivation service, wire-compatible
with R3 Conclave's Mail and EnclaveInstanceInfo (docs/conclave.md)."""
