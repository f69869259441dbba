"""What the API check needs from a .dex file, read from Debian's `dexdump -d`: the classes it
defines (superclass, interfaces, own methods) and, per class, the methods its invoke
instructions call (invoke-*, invoke-*/range, invoke-polymorphic, invoke-custom's bootstrap aside).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


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


class DexError(ValueError):
    pass


_CLASS = re.compile(r"^  Class descriptor  : '(.+)'$")
_SUPER = re.compile(r"^  Superclass        : '(.+)'$")
_IFACE = re.compile(r"^    #\d+              : '(.+)'$")
_NAME = re.compile(r"^      name          : '(.+)'$")
_TYPE = re.compile(r"^      type          : '(.+)'$")
# 0012c4: 7010 ... |0000: invoke-direct {v0}, Landroid/app/Activity;.<init>:()V // method@0000
_INVOKE = re.compile(r"\|[0-9a-f]{4}: invoke-(?!custom)[a-z/-]+ \{[^}]*\}, (\S+?)\.([^.:\s]+):(\S+?)(?:,| //)")


def parse(text: str) -> dict[str, ClassDef]:
    """Classes from `dexdump -d` output."""
    out: dict[str, ClassDef] = {}
    c: ClassDef | None = None
    section = ""
    name = None
    for line in text.splitlines():
        if m := _CLASS.match(line):
            c = out.setdefault(m.group(1), ClassDef(m.group(1), None, []))
            section = ""
        elif c is None:
            continue
        elif m := _SUPER.match(line):
            c.superclass = m.group(1)
        elif line.startswith("  Interfaces        -"):
            section = "interfaces"
        elif line.startswith(("  Static fields", "  Instance fields", "  Direct methods", "  Virtual methods")):
            section = "members"
        elif section == "interfaces" and (m := _IFACE.match(line)):
            c.interfaces.append(m.group(1))
        elif m := _NAME.match(line):
            name = m.group(1)
        elif (m := _TYPE.match(line)) and name is not None and m.group(1).startswith("("):
            c.methods.add((name, m.group(1)))
            name = None
        elif m := _INVOKE.search(line):
            c.calls.add(MethodRef(m.group(1), m.group(2), m.group(3)))
    return out


def classes(data: bytes) -> dict[str, ClassDef]:
    """The classes of one .dex file's bytes (dexdump reads files, so they go to a scratch file)."""
    tool = shutil.which("dexdump")
    if tool is None:
        raise DexError("dexdump not found (apt-get install dexdump; android_demo/tools/fetch-tools.sh does)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "classes.dex"
        path.write_bytes(data)
        r = subprocess.run([tool, "-d", str(path)], capture_output=True, text=True, errors="replace")
    if r.returncode != 0 or "Class descriptor" not in r.stdout:
        raise DexError(f"dexdump could not read the dex: {(r.stderr or r.stdout).strip()[-300:]}")
    return parse(r.stdout)
