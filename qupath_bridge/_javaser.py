"""A focused reader of Java's object serialization stream (``ObjectOutputStream``, protocol 2).

It reads the part of the grammar QuPath's files use: ``TC_OBJECT``, ``TC_CLASSDESC``,
``TC_PROXYCLASSDESC``, ``TC_STRING``, ``TC_LONGSTRING``, ``TC_ARRAY``, ``TC_ENUM``, ``TC_CLASS``,
``TC_REFERENCE`` and ``TC_NULL``, block data (``TC_BLOCKDATA``, ``TC_BLOCKDATALONG``,
``TC_ENDBLOCKDATA``), ``TC_RESET``, handles, the ``SC_SERIALIZABLE`` / ``SC_WRITE_METHOD`` /
``SC_EXTERNALIZABLE`` / ``SC_BLOCK_DATA`` class flags, primitive field values and class
annotations. Nothing is executed and no class is looked up: objects come back as plain data.

Why not ``javaobj-py3``
    It installs here (0.6.1), but it reads an Externalizable object's external data once for
    every class in the chain (QuPath's PathCellObject -> PathDetectionObject -> PathROIObject ->
    PathObject are all Externalizable), while Java writes it once for the object, so it fails on
    every QuPath object file. Correcting that needs a patch inside its parser that a new release
    could undo, and its errors name no byte offset. The subset QuPath needs is small and fully
    specified by Java's "Object Serialization Stream Protocol", so this module (a few hundred
    lines, no dependency) reads it, says exactly where a damaged file stops making sense, and
    lets the caller decode each Externalizable class's data as its ``readExternal`` does (see
    :class:`ExternalReader`) while the stream is read, without building the object graph first.

Values returned
    ``null`` -> None; strings -> str; ``java.lang.Integer``/``Long``/``Short``/``Byte`` -> int,
    ``Double``/``Float`` -> float, ``Boolean`` -> bool, ``Character`` -> str; primitive arrays ->
    numpy arrays (``byte[]`` -> bytes); object arrays -> lists; enums -> :class:`JavaEnum`;
    ``ArrayList``/``LinkedList``/``Arrays$ArrayList``/unmodifiable lists -> lists;
    ``HashMap``/``LinkedHashMap``/``TreeMap`` -> dicts; ``java.util.UUID`` -> str; other objects
    -> :class:`JavaObject` (its fields, and any custom data its ``writeObject`` wrote).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAGIC = 0xACED
VERSION = 5

TC_NULL = 0x70
TC_REFERENCE = 0x71
TC_CLASSDESC = 0x72
TC_OBJECT = 0x73
TC_STRING = 0x74
TC_ARRAY = 0x75
TC_CLASS = 0x76
TC_BLOCKDATA = 0x77
TC_ENDBLOCKDATA = 0x78
TC_RESET = 0x79
TC_BLOCKDATALONG = 0x7A
TC_EXCEPTION = 0x7B
TC_LONGSTRING = 0x7C
TC_PROXYCLASSDESC = 0x7D
TC_ENUM = 0x7E
BASE_HANDLE = 0x7E0000

SC_WRITE_METHOD = 0x01
SC_SERIALIZABLE = 0x02
SC_EXTERNALIZABLE = 0x04
SC_BLOCK_DATA = 0x08
SC_ENUM = 0x10

_U1 = struct.Struct(">B")
_I1 = struct.Struct(">b")
_U2 = struct.Struct(">H")
_I2 = struct.Struct(">h")
_I4 = struct.Struct(">i")
_I8 = struct.Struct(">q")
_F4 = struct.Struct(">f")
_F8 = struct.Struct(">d")

#: Primitive field type codes: (struct, size).
_PRIMITIVES: dict[str, struct.Struct] = {
    "B": _I1,
    "C": _U2,
    "D": _F8,
    "F": _F4,
    "I": _I4,
    "J": _I8,
    "S": _I2,
    "Z": _U1,
}
#: Primitive field type codes -> struct codes (booleans come back as bool).
_STRUCT_CODES = {"B": "b", "C": "H", "D": "d", "F": "f", "I": "i", "J": "q", "S": "h", "Z": "?"}
#: Primitive array element types as big-endian numpy dtypes.
_ARRAY_DTYPES = {
    "D": ">f8",
    "F": ">f4",
    "I": ">i4",
    "J": ">i8",
    "S": ">i2",
    "C": ">u2",
    "Z": "u1",
}
_BOXED = frozenset(
    {
        "java.lang.Integer",
        "java.lang.Long",
        "java.lang.Short",
        "java.lang.Byte",
        "java.lang.Double",
        "java.lang.Float",
        "java.lang.Boolean",
        "java.lang.Character",
    }
)
_LISTS = frozenset(
    {
        "java.util.ArrayList",
        "java.util.LinkedList",
        "java.util.Vector",
        "java.util.Arrays$ArrayList",
        "java.util.Collections$UnmodifiableList",
        "java.util.Collections$UnmodifiableRandomAccessList",
        "java.util.Collections$SynchronizedList",
        "java.util.Collections$SynchronizedRandomAccessList",
        "java.util.concurrent.CopyOnWriteArrayList",
    }
)
_MAPS = frozenset(
    {
        "java.util.HashMap",
        "java.util.LinkedHashMap",
        "java.util.TreeMap",
        "java.util.Hashtable",
        "java.util.concurrent.ConcurrentHashMap",
        "java.util.Collections$UnmodifiableMap",
    }
)


_SIMPLE_NAMES = _BOXED | _LISTS | _MAPS | {"java.util.UUID"}


class JavaStreamError(ValueError):
    """The bytes are not a Java serialization stream this reader understands.

    Attributes:
        offset: the byte offset where reading stopped.
    """

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


@dataclass(eq=False)
class ClassDesc:
    """A class descriptor: name, flags, serializable fields and the superclass's descriptor."""

    name: str
    uid: int
    flags: int
    fields: list[tuple[str, str]]  # (type code, field name)
    superclass: ClassDesc | None = None
    _plan: list[tuple[list[Any], bool]] | None = field(default=None, repr=False)

    def chain(self) -> list[ClassDesc]:
        """This class and its superclasses, the topmost superclass first (stream order)."""
        out: list[ClassDesc] = []
        desc: ClassDesc | None = self
        while desc is not None:
            out.append(desc)
            desc = desc.superclass
        out.reverse()
        return out

    def plan(self) -> list[tuple[list[Any], bool]]:
        """How to read an object of this class, worked out once: for each serializable class
        of the chain, its steps (a struct for a run of primitive fields with their names, or
        an object field's name) and whether custom data follows (``SC_WRITE_METHOD``)."""
        if self._plan is None:
            plan = []
            for cls in self.chain():
                if not cls.flags & SC_SERIALIZABLE:
                    continue
                steps: list[Any] = []
                run: list[tuple[str, str]] = []
                for code, name in [*cls.fields, ("L", "")]:
                    if code in ("L", "["):
                        if run:
                            fmt = ">" + "".join(_STRUCT_CODES[c] for c, _ in run)
                            chars = tuple(n for c, n in run if c == "C")
                            steps.append((struct.Struct(fmt), tuple(n for _, n in run), chars))
                            run = []
                        if name:
                            steps.append(name)
                    else:
                        run.append((code, name))
                plan.append((steps, bool(cls.flags & SC_WRITE_METHOD)))
            self._plan = plan
        return self._plan


@dataclass(eq=False)
class JavaObject:
    """An object of a class this reader has no special meaning for.

    Attributes:
        class_name: the Java class name (``qupath.lib.roi.PolygonROI$SerializationProxy``).
        fields: serializable field values of the class and its superclasses.
        annotations: what each class's ``writeObject`` (or ``writeExternal``) wrote after the
            fields, as a list of objects and ``bytes`` (block data).
    """

    class_name: str
    fields: dict[str, Any] = field(default_factory=dict)
    annotations: list[Any] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"JavaObject({self.class_name}, fields={sorted(self.fields)})"


@dataclass(frozen=True)
class JavaEnum:
    """An enum constant, e.g. ``FLUORESCENCE`` of ``qupath.lib.images.ImageData$ImageType``."""

    class_name: str
    constant: str


@dataclass(frozen=True)
class JavaClass:
    """A ``java.lang.Class`` object in the stream (only its name)."""

    name: str


class _Pending:
    """Handle-table placeholder for an object that is still being read."""


_PENDING = _Pending()


#: Reads one Externalizable object's data (as its ``readExternal`` would) and returns its value.
ExternalHandler = Callable[["ExternalReader", ClassDesc], Any]


class ExternalReader:
    """What a handler sees of an Externalizable object's data: Java's ``ObjectInput``."""

    def __init__(self, stream: JavaStream) -> None:
        self._stream = stream

    @property
    def offset(self) -> int:
        """The current byte offset (for error messages)."""
        return self._stream.pos

    def read_object(self) -> Any:
        """``readObject()``."""
        return self._stream.read_object()

    def read_int(self) -> int:
        """``readInt()``."""
        return int(_I4.unpack(self._stream.read_block_bytes(4))[0])

    def read_long(self) -> int:
        """``readLong()``."""
        return int(_I8.unpack(self._stream.read_block_bytes(8))[0])

    def read_double(self) -> float:
        """``readDouble()``."""
        return float(_F8.unpack(self._stream.read_block_bytes(8))[0])

    def read_float(self) -> float:
        """``readFloat()``."""
        return float(_F4.unpack(self._stream.read_block_bytes(4))[0])

    def read_boolean(self) -> bool:
        """``readBoolean()``."""
        return self._stream.read_block_bytes(1)[0] != 0

    def read_utf(self) -> str:
        """``readUTF()``."""
        (length,) = _U2.unpack(self._stream.read_block_bytes(2))
        return self._stream.decode_utf(self._stream.read_block_bytes(length))

    def at_end(self) -> bool:
        """True when the object's data has nothing more (the end-of-data marker is next)."""
        return self._stream.at_end_of_block_data()


class JavaStream:
    """A Java serialization stream over a bytes-like buffer (a ``bytes`` or an ``mmap``).

    Args:
        data: the whole stream.
        handlers: Externalizable class name -> handler that decodes that class's data.
        what: how to name the stream in error messages (e.g. the file's path).
        fallback: asked for a handler when ``handlers`` names none for a class (for example
            to recognise subclasses); None or a None answer keeps the data as a JavaObject.
    """

    def __init__(
        self,
        data: bytes | memoryview | Any,
        handlers: Mapping[str, ExternalHandler] | None = None,
        what: str = "stream",
        fallback: Callable[[ClassDesc], ExternalHandler | None] | None = None,
    ) -> None:
        self._data = data
        self._size = len(data)
        self.pos = 0
        self._block_left = 0
        self._handles: list[Any] = []
        self._handlers = dict(handlers or {})
        self._fallback = fallback
        self.what = what
        if self._size < 4:
            raise JavaStreamError(f"{what} is too short to be a Java serialization stream", 0)
        magic, version = struct.unpack_from(">HH", data, 0)
        if magic != MAGIC:
            raise JavaStreamError(
                f"{what} is not a Java serialization stream (it starts with {bytes(data[:4])!r}, "
                "not AC ED 00 05)",
                0,
            )
        if version != VERSION:
            raise JavaStreamError(f"{what}: unsupported serialization version {version}", 2)
        self.pos = 4

    @property
    def size(self) -> int:
        """Length of the stream in bytes."""
        return self._size

    # ------------------------------------------------------------------ low level

    def _fail(self, message: str, offset: int | None = None) -> JavaStreamError:
        return JavaStreamError(message, self.pos if offset is None else offset)

    def _eof(self, n: int) -> JavaStreamError:
        return self._fail(
            f"the data ends too early (truncated?): {n} more bytes were needed at byte "
            f"{self.pos}, but there are only {self._size}"
        )

    def _take(self, n: int) -> bytes:
        start = self.pos
        end = start + n
        if n < 0 or end > self._size:
            raise self._eof(n)
        self.pos = end
        return bytes(self._data[start:end])

    def _u1(self) -> int:
        if self.pos >= self._size:
            raise self._eof(1)
        value = self._data[self.pos]
        self.pos += 1
        return int(value)

    def _unpack(self, fmt: struct.Struct) -> Any:
        if self.pos + fmt.size > self._size:
            raise self._eof(fmt.size)
        (value,) = fmt.unpack_from(self._data, self.pos)
        self.pos += fmt.size
        return value

    def peek_type(self) -> int:
        """The next type code (e.g. ``TC_BLOCKDATA``), without reading it."""
        return self._peek()

    def _peek(self) -> int:
        if self.pos >= self._size:
            raise self._eof(1)
        return int(self._data[self.pos])

    def decode_utf(self, raw: bytes) -> str:
        """Decode Java's modified UTF-8 (NUL as C0 80, characters outside the BMP as surrogate
        pairs)."""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
        try:
            text = raw.replace(b"\xc0\x80", b"\x00").decode("utf-8", "surrogatepass")
            return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
        except UnicodeError:
            raise self._fail(
                f"a string before byte {self.pos} is not valid (modified) UTF-8"
            ) from None

    def _utf(self) -> str:
        length = self._unpack(_U2)
        return self.decode_utf(self._take(length))

    # ------------------------------------------------------------------ block data

    def read_block_bytes(self, n: int) -> bytes:
        """Read ``n`` bytes of block data (what ``writeInt`` etc. wrote in custom data),
        across block boundaries."""
        if self._block_left >= n:
            self._block_left -= n
            return self._take(n)
        parts = []
        while n > 0:
            if self._block_left == 0:
                self._start_block()
            chunk = min(n, self._block_left)
            parts.append(self._take(chunk))
            self._block_left -= chunk
            n -= chunk
        return b"".join(parts)

    def _start_block(self) -> None:
        start = self.pos
        tc = self._u1()
        if tc == TC_BLOCKDATA:
            length = self._u1()
        elif tc == TC_BLOCKDATALONG:
            length = self._unpack(_I4)
            if length < 0:
                raise self._fail(f"negative block length {length} at byte {start}", start)
        elif tc == TC_ENDBLOCKDATA:
            raise self._fail(
                f"primitive data expected at byte {start}, but the object's data ends there", start
            )
        else:
            raise self._fail(
                f"primitive data expected at byte {start}, found type code 0x{tc:02x}", start
            )
        if self.pos + length > self._size:
            raise self._fail(
                f"the data ends too early (truncated?): a block of {length} bytes at byte "
                f"{start} runs past the end ({self._size} bytes)",
                start,
            )
        self._block_left = length

    def at_end_of_block_data(self) -> bool:
        """True when no block data is left and the end marker follows."""
        return self._block_left == 0 and self._peek() == TC_ENDBLOCKDATA

    def _skip_custom_data(self) -> None:
        """Skip what is left of an object's custom data, up to and including its end marker (as
        Java does when a reader reads less than the writer wrote)."""
        if self._block_left:
            self._take(self._block_left)
            self._block_left = 0
        while True:
            tc = self._peek()
            if tc == TC_ENDBLOCKDATA:
                self.pos += 1
                return
            if tc in (TC_BLOCKDATA, TC_BLOCKDATALONG):
                self._start_block()
                self._take(self._block_left)
                self._block_left = 0
            else:
                self.read_object()

    def _read_annotation(self) -> list[Any]:
        """A class or object annotation: objects and block data up to the end marker."""
        saved = self._block_left
        self._block_left = 0
        items: list[Any] = []
        while True:
            tc = self._peek()
            if tc == TC_ENDBLOCKDATA:
                self.pos += 1
                break
            if tc in (TC_BLOCKDATA, TC_BLOCKDATALONG):
                self._start_block()
                items.append(self._take(self._block_left))
                self._block_left = 0
            else:
                items.append(self.read_object())
        self._block_left = saved
        return items

    # ------------------------------------------------------------------ objects

    def at_end(self) -> bool:
        """True when the whole stream has been read."""
        return self._block_left == 0 and self.pos >= self._size

    def read_object(self) -> Any:
        """Read the next object (``readObject()``)."""
        if self._block_left:
            raise self._fail(
                f"an object was expected at byte {self.pos}, but {self._block_left} bytes of "
                "primitive data come first"
            )
        return self._read_content()

    def _read_content(self) -> Any:
        start = self.pos
        if start >= self._size:
            raise self._eof(1)
        tc = self._data[start]
        self.pos = start + 1
        if tc == TC_REFERENCE:
            return self._reference(start)
        if tc == TC_NULL:
            return None
        if tc == TC_STRING:
            return self._new_handle(self._utf())
        if tc == TC_LONGSTRING:
            length = self._unpack(_I8)
            return self._new_handle(self.decode_utf(self._take(length)))
        if tc == TC_OBJECT:
            return self._new_object(start)
        if tc == TC_ARRAY:
            return self._new_array(start)
        if tc == TC_ENUM:
            desc = self._class_desc()
            if desc is None:
                raise self._fail(f"an enum at byte {start} has no class", start)
            index = self._reserve_handle(desc.name)
            constant = self.read_object()
            if not isinstance(constant, str):
                raise self._fail(f"the enum at byte {start} has no constant name", start)
            value = JavaEnum(desc.name, constant)
            self._handles[index] = value
            return value
        if tc in (TC_CLASSDESC, TC_PROXYCLASSDESC):
            self.pos = start
            return self._class_desc()
        if tc == TC_CLASS:
            desc = self._class_desc()
            return self._new_handle(JavaClass(desc.name if desc else "?"))
        if tc == TC_RESET:
            self._handles.clear()
            return self._read_content()
        if tc == TC_EXCEPTION:
            raise self._fail(f"the writer failed while writing (an exception at byte {start})")
        if tc in (TC_BLOCKDATA, TC_BLOCKDATALONG):
            raise self._fail(f"an object was expected at byte {start}, found primitive data", start)
        if tc == TC_ENDBLOCKDATA:
            raise self._fail(f"an object was expected at byte {start}, found an end marker", start)
        raise self._fail(f"unknown type code 0x{tc:02x} at byte {start}", start)

    def _new_handle(self, value: Any) -> Any:
        self._handles.append(value)
        return value

    def _reserve_handle(self, class_name: str) -> int:
        self._handles.append(_PENDING)
        return len(self._handles) - 1

    def _reference(self, start: int) -> Any:
        pos = self.pos
        if pos + 4 > self._size:
            raise self._eof(4)
        handle = _I4.unpack_from(self._data, pos)[0] - BASE_HANDLE
        self.pos = pos + 4
        if not 0 <= handle < len(self._handles):
            raise self._fail(
                f"a reference at byte {start} points to object {handle}, but only "
                f"{len(self._handles)} objects have been read",
                start,
            )
        value = self._handles[handle]
        if value is _PENDING:
            raise self._fail(
                f"a reference at byte {start} points back to an object that is still being "
                "read (a cycle this reader does not support)",
                start,
            )
        return value

    def _class_desc(self) -> ClassDesc | None:
        start = self.pos
        tc = self._u1()
        if tc == TC_NULL:
            return None
        if tc == TC_REFERENCE:
            desc = self._reference(start)
            if not isinstance(desc, ClassDesc):
                raise self._fail(f"a class descriptor was expected at byte {start}", start)
            return desc
        if tc == TC_CLASSDESC:
            name = self._utf()
            uid = self._unpack(_I8)
            desc = ClassDesc(name, uid, 0, [])
            self._handles.append(desc)
            desc.flags = self._u1()
            count = self._unpack(_I2)
            if count < 0:
                raise self._fail(f"class {name} at byte {start} has {count} fields", start)
            for _ in range(count):
                code = chr(self._u1())
                field_name = self._utf()
                if code in ("L", "["):
                    type_name = self.read_object()
                    if not isinstance(type_name, str):
                        raise self._fail(
                            f"field {field_name!r} of class {name} has no type name", start
                        )
                elif code not in _PRIMITIVES:
                    raise self._fail(
                        f"field {field_name!r} of class {name} (byte {start}) has an unknown "
                        f"type code {code!r}",
                        start,
                    )
                desc.fields.append((code, field_name))
            self._read_annotation()
            desc.superclass = self._class_desc()
            return desc
        if tc == TC_PROXYCLASSDESC:
            desc = ClassDesc("<proxy>", 0, SC_SERIALIZABLE, [])
            self._handles.append(desc)
            count = self._unpack(_I4)
            if not 0 <= count <= 65535:
                raise self._fail(f"a proxy class at byte {start} has {count} interfaces", start)
            desc.name = "<proxy " + ",".join(self._utf() for _ in range(count)) + ">"
            self._read_annotation()
            desc.superclass = self._class_desc()
            return desc
        raise self._fail(
            f"a class descriptor was expected at byte {start}, found 0x{tc:02x}", start
        )

    def _new_object(self, start: int) -> Any:
        if self.pos < self._size and self._data[self.pos] == TC_REFERENCE:  # the usual case
            self.pos += 1
            desc = self._reference(self.pos - 1)
            if not isinstance(desc, ClassDesc):
                raise self._fail(f"the object at byte {start} has no class descriptor", start)
        else:
            desc = self._class_desc()
        if desc is None:
            raise self._fail(f"the object at byte {start} has no class", start)
        handles = self._handles
        index = len(handles)
        handles.append(_PENDING)
        if desc.flags & SC_EXTERNALIZABLE:
            value = self._external(desc, start)
        else:
            value = self._serializable(desc, start)
        self._handles[index] = value
        return value

    def _external(self, desc: ClassDesc, start: int) -> Any:
        if not desc.flags & SC_BLOCK_DATA:
            raise self._fail(
                f"the {desc.name} at byte {start} was written with the old protocol 1, "
                "which this reader does not support",
                start,
            )
        handler = self._handlers.get(desc.name)
        if handler is None and self._fallback is not None:
            handler = self._fallback(desc)
        saved = self._block_left
        self._block_left = 0
        try:
            if handler is None:
                return JavaObject(desc.name, {}, self._read_annotation())
            value = handler(ExternalReader(self), desc)
            self._skip_custom_data()
            return value
        finally:
            self._block_left = saved

    def _serializable(self, desc: ClassDesc, start: int) -> Any:
        fields: dict[str, Any] = {}
        annotations: list[Any] = []
        data = self._data
        for steps, custom in desc.plan():
            for step in steps:
                if isinstance(step, str):
                    fields[step] = self._read_content()
                    continue
                layout, names, chars = step
                if self.pos + layout.size > self._size:
                    raise self._eof(layout.size)
                fields.update(zip(names, layout.unpack_from(data, self.pos), strict=True))
                self.pos += layout.size
                for name in chars:
                    fields[name] = chr(fields[name])
            if custom:
                annotations.extend(self._read_annotation())
        if desc.name in _SIMPLE_NAMES:
            return _simplify(desc.name, fields, annotations, self, start)
        return JavaObject(desc.name, fields, annotations)

    def _new_array(self, start: int) -> Any:
        desc = self._class_desc()
        if desc is None or not desc.name.startswith("["):
            raise self._fail(f"the array at byte {start} has no array class", start)
        index = self._reserve_handle(desc.name)
        length = self._unpack(_I4)
        element = desc.name[1:2]
        remaining = self._size - self.pos
        if element in _ARRAY_DTYPES or element == "B":
            item_size = 1 if element == "B" else np.dtype(_ARRAY_DTYPES[element]).itemsize
            if length < 0 or length * item_size > remaining:
                raise self._fail(
                    f"the {desc.name} array at byte {start} claims {length} elements, more than "
                    f"the {remaining} bytes left",
                    start,
                )
            raw = self._take(length * item_size)
            value: Any
            if element == "B":
                value = raw
            else:
                value = np.frombuffer(raw, dtype=_ARRAY_DTYPES[element]).astype(
                    _ARRAY_DTYPES[element].lstrip(">")
                )
                if element == "Z":
                    value = value.astype(bool)
        elif element in ("L", "["):
            if length < 0 or length > remaining:
                raise self._fail(
                    f"the array at byte {start} claims {length} elements, more than the "
                    f"{remaining} bytes left",
                    start,
                )
            value = [self.read_object() for _ in range(length)]
        else:
            raise self._fail(f"unknown array class {desc.name!r} at byte {start}", start)
        self._handles[index] = value
        return value


def _simplify(
    class_name: str, fields: dict[str, Any], annotations: list[Any], stream: JavaStream, start: int
) -> Any:
    """Plain Python values for the common Java library classes."""
    if class_name in _BOXED:
        return fields.get("value")
    if class_name == "java.util.UUID":
        most = fields.get("mostSigBits", 0) & 0xFFFFFFFFFFFFFFFF
        least = fields.get("leastSigBits", 0) & 0xFFFFFFFFFFFFFFFF
        return str(uuid.UUID(int=(most << 64) | least))
    if class_name in _LISTS:
        if "list" in fields and isinstance(fields["list"], list):  # Collections wrappers
            return fields["list"]
        items = [item for item in annotations if not isinstance(item, bytes)]
        if class_name == "java.util.Vector" and isinstance(fields.get("elementData"), list):
            count = fields.get("elementCount", 0)
            return list(fields["elementData"][:count])
        return items
    if class_name in _MAPS:
        if "m" in fields and isinstance(fields["m"], dict):  # Collections$UnmodifiableMap
            return fields["m"]
        items = [item for item in annotations if not isinstance(item, bytes)]
        if len(items) % 2:
            raise JavaStreamError(
                f"the {class_name} at byte {start} has an odd number of keys and values",
                stream.pos,
            )
        result: dict[Any, Any] = {}
        for key, value in zip(items[::2], items[1::2], strict=True):
            try:
                result[key] = value
            except TypeError:  # an unhashable key: keep it as its repr
                result[repr(key)] = value
        return result
    return JavaObject(class_name, fields, annotations)
