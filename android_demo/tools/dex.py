"""A small reader for .dex files: the classes they define and the methods each class calls.

Only what the API check needs: class_defs (superclass, interfaces, own methods) and, per class,
the method references of its invoke instructions (invoke-*, invoke-*/range, invoke-polymorphic).
Format: https://source.android.com/docs/core/runtime/dex-format
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

NO_INDEX = 0xFFFFFFFF


@dataclass(frozen=True)
class MethodRef:
    cls: str  # descriptor, e.g. Landroid/widget/TextView;
    name: str
    desc: str  # (args)ret, e.g. (Ljava/lang/CharSequence;)V

    def __str__(self) -> str:
        return f"{self.cls}->{self.name}{self.desc}"


@dataclass
class ClassDef:
    name: str
    superclass: str | None
    interfaces: list[str]
    methods: set[tuple[str, str]] = field(default_factory=set)  # (name, desc) defined here
    calls: set[MethodRef] = field(default_factory=set)


# Width in 16-bit code units of each opcode (0x00 is nop unless it starts a payload).
_WIDTH = [1] * 256
for _lo, _hi, _w in [
    (0x02, 0x02, 2), (0x03, 0x03, 3), (0x05, 0x05, 2), (0x06, 0x06, 3), (0x08, 0x08, 2), (0x09, 0x09, 3),
    (0x13, 0x13, 2), (0x14, 0x14, 3), (0x15, 0x16, 2), (0x17, 0x17, 3), (0x18, 0x18, 5), (0x19, 0x1a, 2),
    (0x1b, 0x1b, 3), (0x1c, 0x1c, 2), (0x1f, 0x20, 2), (0x22, 0x23, 2), (0x24, 0x26, 3), (0x29, 0x29, 2),
    (0x2a, 0x2c, 3), (0x2d, 0x3d, 2), (0x44, 0x6d, 2), (0x6e, 0x72, 3), (0x74, 0x78, 3), (0x90, 0xaf, 2),
    (0xd0, 0xe2, 2), (0xfa, 0xfb, 4), (0xfc, 0xfd, 3), (0xfe, 0xff, 2),
]:
    for _op in range(_lo, _hi + 1):
        _WIDTH[_op] = _w
_INVOKES = set(range(0x6e, 0x73)) | set(range(0x74, 0x79)) | {0xfa, 0xfb}


class DexError(Exception):
    pass


class Dex:
    def __init__(self, data: bytes):
        if data[:4] != b"dex\n":
            raise DexError("not a dex file (bad magic)")
        self.data = data
        (self.string_ids_size, self.string_ids_off, self.type_ids_size, self.type_ids_off,
         self.proto_ids_size, self.proto_ids_off, _fsize, _foff, self.method_ids_size,
         self.method_ids_off, self.class_defs_size, self.class_defs_off) = struct.unpack_from(
            "<12I", data, 0x38)
        self._strings: dict[int, str] = {}

    # --- tables -----------------------------------------------------------------------------
    def string(self, i: int) -> str:
        s = self._strings.get(i)
        if s is None:
            off = struct.unpack_from("<I", self.data, self.string_ids_off + 4 * i)[0]
            _, off = self._uleb(off)  # utf16 length
            end = self.data.index(b"\0", off)
            s = self._strings[i] = self.data[off:end].decode("utf-8", errors="replace")  # MUTF-8
        return s

    def type(self, i: int) -> str:
        return self.string(struct.unpack_from("<I", self.data, self.type_ids_off + 4 * i)[0])

    def _type_list(self, off: int) -> list[str]:
        if off == 0:
            return []
        n = struct.unpack_from("<I", self.data, off)[0]
        return [self.type(t) for t in struct.unpack_from(f"<{n}H", self.data, off + 4)]

    def proto(self, i: int) -> str:
        _shorty, ret, params = struct.unpack_from("<3I", self.data, self.proto_ids_off + 12 * i)
        return "(" + "".join(self._type_list(params)) + ")" + self.type(ret)

    def method(self, i: int) -> MethodRef:
        cls, proto, name = struct.unpack_from("<HHI", self.data, self.method_ids_off + 8 * i)
        return MethodRef(self.type(cls), self.string(name), self.proto(proto))

    def method_refs(self) -> list[MethodRef]:
        return [self.method(i) for i in range(self.method_ids_size)]

    # --- classes ----------------------------------------------------------------------------
    def classes(self) -> dict[str, ClassDef]:
        out = {}
        for k in range(self.class_defs_size):
            (cls, _flags, sup, ifaces, _src, _ann, data_off, _static) = struct.unpack_from(
                "<8I", self.data, self.class_defs_off + 32 * k)
            c = ClassDef(self.type(cls), None if sup == NO_INDEX else self.type(sup), self._type_list(ifaces))
            if data_off:
                self._class_data(data_off, c)
            out[c.name] = c
        return out

    def _class_data(self, off: int, c: ClassDef) -> None:
        sizes = []
        for _ in range(4):
            v, off = self._uleb(off)
            sizes.append(v)
        for _ in range(sizes[0] + sizes[1]):  # static + instance fields
            _, off = self._uleb(off)
            _, off = self._uleb(off)
        for count in sizes[2:]:  # direct, virtual methods
            idx = 0
            for _ in range(count):
                diff, off = self._uleb(off)
                _flags, off = self._uleb(off)
                code_off, off = self._uleb(off)
                idx += diff
                m = self.method(idx)
                c.methods.add((m.name, m.desc))
                if code_off:
                    c.calls.update(self.method(i) for i in self._invoked(code_off))

    def _invoked(self, code_off: int) -> list[int]:
        """Method indices of the invoke instructions in one code_item."""
        n = struct.unpack_from("<I", self.data, code_off + 12)[0]
        insns = struct.unpack_from(f"<{n}H", self.data, code_off + 16)
        pc, found = 0, []
        while pc < n:
            unit = insns[pc]
            op = unit & 0xFF
            if op == 0 and unit >> 8:  # payloads of switch / fill-array-data
                if unit == 0x0100:
                    pc += 4 + insns[pc + 1] * 2
                elif unit == 0x0200:
                    pc += 2 + insns[pc + 1] * 4
                elif unit == 0x0300:
                    width, size = insns[pc + 1], insns[pc + 2] | insns[pc + 3] << 16
                    pc += 4 + (size * width + 1) // 2
                else:
                    raise DexError(f"unknown payload 0x{unit:04x} at code offset {code_off}")
                continue
            if op in _INVOKES:
                found.append(insns[pc + 1])
            pc += _WIDTH[op]
        return found

    def _uleb(self, off: int) -> tuple[int, int]:
        result = shift = 0
        while True:
            b = self.data[off]
            off += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result, off
            shift += 7
