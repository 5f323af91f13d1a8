from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATUS_UNKNOWN: _ClassVar[Status]
    STATUS_STANDBY: _ClassVar[Status]
    STATUS_ACTIVE: _ClassVar[Status]
    STATUS_PASSIVE: _ClassVar[Status]
    STATUS_ERROR: _ClassVar[Status]
    STATUS_COMPLETE: _ClassVar[Status]
STATUS_UNKNOWN: Status
STATUS_STANDBY: Status
STATUS_ACTIVE: Status
STATUS_PASSIVE: Status
STATUS_ERROR: Status
STATUS_COMPLETE: Status

class AuraeMeta(_message.Message):
    __slots__ = ("name", "message")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    message: str
    def __init__(self, name: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ProcessMeta(_message.Message):
    __slots__ = ("pid",)
    PID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    def __init__(self, pid: _Optional[int] = ...) -> None: ...
