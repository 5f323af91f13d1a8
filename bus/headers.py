"""Header names shared by every hop on the bus."""

CONTENT_TYPE = "Content-Type"
REQUEST_ID = "Teebus-Request-Id"
# How long the requester waits for the reply, in seconds (decimal): work past it is wasted, so a
# handler that can stop early (a process it started) reads `Incoming.seconds_left()`.
TIMEOUT = "Teebus-Timeout"
# Set when the body travelled through the payload stream (bus/payloads.py): its name, its chunks,
PAYLOAD_REF = "Teebus-Payload-Ref"
PAYLOAD_CHUNKS = "Teebus-Payload-Chunks"
PAYLOAD_KEY = "Teebus-Payload-Key"   # ... and the key that opens it (a secret: tools never show it)
ERROR = "Nats-Service-Error"
ERROR_CODE = "Nats-Service-Error-Code"

JSON = "application/json"
CBOR = "application/cbor"
OCTETS = "application/octet-stream"
