from . import meta_pb2 as _meta_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Executable(_message.Message):
    __slots__ = ("meta", "command", "comment")
    META_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.AuraeMeta
    command: str
    comment: str
    def __init__(self, meta: _Optional[_Union[_meta_pb2.AuraeMeta, _Mapping]] = ..., command: _Optional[str] = ..., comment: _Optional[str] = ...) -> None: ...

class ExecutableStatus(_message.Message):
    __slots__ = ("meta", "proc", "status", "stdout", "stderr", "exit_code")
    META_FIELD_NUMBER: _ClassVar[int]
    PROC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.AuraeMeta
    proc: _meta_pb2.ProcessMeta
    status: _meta_pb2.Status
    stdout: str
    stderr: str
    exit_code: str
    def __init__(self, meta: _Optional[_Union[_meta_pb2.AuraeMeta, _Mapping]] = ..., proc: _Optional[_Union[_meta_pb2.ProcessMeta, _Mapping]] = ..., status: _Optional[_Union[_meta_pb2.Status, str]] = ..., stdout: _Optional[str] = ..., stderr: _Optional[str] = ..., exit_code: _Optional[str] = ...) -> None: ...

class Cell(_message.Message):
    __slots__ = ("meta", "containers")
    META_FIELD_NUMBER: _ClassVar[int]
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.AuraeMeta
    containers: _containers.RepeatedCompositeFieldContainer[Container]
    def __init__(self, meta: _Optional[_Union[_meta_pb2.AuraeMeta, _Mapping]] = ..., containers: _Optional[_Iterable[_Union[Container, _Mapping]]] = ...) -> None: ...

class CellStatus(_message.Message):
    __slots__ = ("meta", "status", "container_statuses")
    META_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_STATUSES_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.AuraeMeta
    status: _meta_pb2.Status
    container_statuses: _containers.RepeatedCompositeFieldContainer[ContainerStatus]
    def __init__(self, meta: _Optional[_Union[_meta_pb2.AuraeMeta, _Mapping]] = ..., status: _Optional[_Union[_meta_pb2.Status, str]] = ..., container_statuses: _Optional[_Iterable[_Union[ContainerStatus, _Mapping]]] = ...) -> None: ...

class Container(_message.Message):
    __slots__ = ("meta", "image")
    META_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.AuraeMeta
    image: str
    def __init__(self, meta: _Optional[_Union[_meta_pb2.AuraeMeta, _Mapping]] = ..., image: _Optional[str] = ...) -> None: ...

class ContainerStatus(_message.Message):
    __slots__ = ("meta", "proc", "status")
    META_FIELD_NUMBER: _ClassVar[int]
    PROC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.AuraeMeta
    proc: _meta_pb2.ProcessMeta
    status: _meta_pb2.Status
    def __init__(self, meta: _Optional[_Union[_meta_pb2.AuraeMeta, _Mapping]] = ..., proc: _Optional[_Union[_meta_pb2.ProcessMeta, _Mapping]] = ..., status: _Optional[_Union[_meta_pb2.Status, str]] = ...) -> None: ...

class Pod(_message.Message):
    __slots__ = ("meta", "cell")
    META_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.AuraeMeta
    cell: _containers.RepeatedCompositeFieldContainer[Cell]
    def __init__(self, meta: _Optional[_Union[_meta_pb2.AuraeMeta, _Mapping]] = ..., cell: _Optional[_Iterable[_Union[Cell, _Mapping]]] = ...) -> None: ...

class PodStatus(_message.Message):
    __slots__ = ("meta", "status", "spawn_response", "instance", "cell_status")
    META_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SPAWN_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    CELL_STATUS_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.AuraeMeta
    status: _meta_pb2.Status
    spawn_response: SpawnResponse
    instance: Instance
    cell_status: CellStatus
    def __init__(self, meta: _Optional[_Union[_meta_pb2.AuraeMeta, _Mapping]] = ..., status: _Optional[_Union[_meta_pb2.Status, str]] = ..., spawn_response: _Optional[_Union[SpawnResponse, _Mapping]] = ..., instance: _Optional[_Union[Instance, _Mapping]] = ..., cell_status: _Optional[_Union[CellStatus, _Mapping]] = ...) -> None: ...

class VirtualMachine(_message.Message):
    __slots__ = ("meta", "name", "image")
    META_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.AuraeMeta
    name: str
    image: str
    def __init__(self, meta: _Optional[_Union[_meta_pb2.AuraeMeta, _Mapping]] = ..., name: _Optional[str] = ..., image: _Optional[str] = ...) -> None: ...

class VirtualMachineStatus(_message.Message):
    __slots__ = ("meta", "status")
    META_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.AuraeMeta
    status: _meta_pb2.Status
    def __init__(self, meta: _Optional[_Union[_meta_pb2.AuraeMeta, _Mapping]] = ..., status: _Optional[_Union[_meta_pb2.Status, str]] = ...) -> None: ...

class Instance(_message.Message):
    __slots__ = ("meta", "is_root", "nested_instances")
    META_FIELD_NUMBER: _ClassVar[int]
    IS_ROOT_FIELD_NUMBER: _ClassVar[int]
    NESTED_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.AuraeMeta
    is_root: bool
    nested_instances: _containers.RepeatedCompositeFieldContainer[Instance]
    def __init__(self, meta: _Optional[_Union[_meta_pb2.AuraeMeta, _Mapping]] = ..., is_root: _Optional[bool] = ..., nested_instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ...) -> None: ...

class SpawnRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SpawnResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
