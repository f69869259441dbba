#!/usr/bin/env python3
"""Check an APK's (or .dex's) calls into the Android framework against jadx's framework signature DB.

The app is compiled against hand-written stubs (android_demo/tools/android-stubs), so a stub with a
wrong parameter or return type would compile and then fail on a phone with NoSuchMethodError. This
check reads every invoke instruction in the dex and resolves its target the way ART does (the named
class, then its superclasses and interfaces, through app classes into framework classes):

  * every call to an android.* / dalvik.* method must exist in the DB (clst/core.jcst inside the jadx
    jar: 5079 classes, about API 31; it has no fields and no "added in API" levels);
  * every call made by the app's own classes into the platform (java.*, javax.*, org.json, ...)
    must exist there too, which catches JDK-only methods that Android lacks;
  * every activity in the manifest must be a class in the dex that extends android.app.Activity.

Examples:
  python3 android_demo/tools/apicheck.py android_demo/build/flora-chat-debug.apk
  python3 android_demo/tools/apicheck.py build/dex/classes.dex --app-package com.example
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import dex
from dex import ClassDef, MethodRef
from toolchain import TOOLS, AppConfig, Tools, ToolError, fail, run

DB_CACHE = TOOLS / "jadx" / "framework-api.txt"
DUMPER = Path(__file__).resolve().parent / "apidump" / "ApiDump.java"
FRAMEWORK_PREFIXES = ("Landroid/", "Ldalvik/")
OBJECT = "Ljava/lang/Object;"


def _desc(java_name: str) -> str:
    return "L" + java_name.replace(".", "/") + ";"


@dataclass
class FrameworkDB:
    parents: dict[str, list[str]]
    methods: dict[str, set[str]]  # class descriptor -> {"name(args)ret"}

    @classmethod
    def load(cls, tools: Tools) -> FrameworkDB:
        stamp = (TOOLS / "jadx" / ".from").read_text().strip() if (TOOLS / "jadx" / ".from").exists() else "?"
        if not DB_CACHE.exists() or DB_CACHE.read_text().split("\n", 1)[0] != f"# {stamp}":
            with tempfile.TemporaryDirectory() as tmp:
                run(["javac", "-nowarn", "-cp", tools.jadx_jar, "-d", tmp, DUMPER], "javac ApiDump")
                text = run(["java", "-cp", f"{tools.jadx_jar}:{tmp}", "ApiDump"], "ApiDump").stdout
            tmp_file = DB_CACHE.with_name(f".{DB_CACHE.name}.{os.getpid()}")
            tmp_file.write_text(f"# {stamp}\n{text}")
            tmp_file.replace(DB_CACHE)  # atomic: a concurrent reader never sees half a file
        return cls.parse(DB_CACHE.read_text())

    @classmethod
    def parse(cls, text: str) -> FrameworkDB:
        parents: dict[str, list[str]] = {}
        methods: dict[str, set[str]] = {}
        cur = None
        for line in text.splitlines():
            if line.startswith("C "):
                names = line[2:].split()
                cur = _desc(names[0])
                parents[cur] = [_desc(p) for p in names[1:]]
                methods[cur] = set()
            elif line.startswith("M ") and cur:
                methods[cur].add(line[2:])
        if len(methods) < 1000 or OBJECT not in methods:
            raise ToolError(f"the framework signature DB {DB_CACHE} looks truncated ({len(methods)} classes)",
                            f"delete {DB_CACHE} and run again")
        return cls(parents, methods)


@dataclass
class Resolution:
    status: str  # "app" (defined in the dex), "framework", "missing", "unknown-class"
    where: str = ""  # the class that defines the method, or the class the lookup ended at


@dataclass
class ApiReport:
    framework_calls: list[str] = field(default_factory=list)  # unique refs that resolved in the DB
    android_calls: list[str] = field(default_factory=list)  # ... of which land in android.*/dalvik.*
    missing: list[str] = field(default_factory=list)  # failures: "<ref> (<reason>) from <caller>"
    library_unknown: list[str] = field(default_factory=list)  # classes libraries call that nothing defines
    components: list[str] = field(default_factory=list)  # manifest activities found
    component_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.component_errors

    def summary(self) -> str:
        return (f"{len(self.android_calls)} android refs, {len(self.framework_calls)} framework refs, "
                f"{len(self.missing)} not found; {len(self.components)} activities ok, "
                f"{len(self.component_errors)} bad")


class Resolver:
    def __init__(self, classes: dict[str, ClassDef], db: FrameworkDB):
        self.classes, self.db = classes, db

    def resolve(self, cls: str, name: str, desc: str) -> Resolution:
        if cls.startswith("["):  # arrays: clone() and Object's methods
            cls = OBJECT
        found = self._find(cls, name + desc, set())
        if found is not None:
            return found
        return Resolution("unknown-class", cls) if self._unknown(cls) else Resolution("missing", cls)

    def _find(self, cls: str, key: str, seen: set) -> Resolution | None:
        if cls in seen:
            return None
        seen.add(cls)
        c = self.classes.get(cls)
        if c is not None:
            name, _, desc = key.partition("(")
            if (name, "(" + desc) in c.methods:
                return Resolution("app", cls)
            up = ([c.superclass] if c.superclass else []) + c.interfaces
        elif cls in self.db.methods:
            if key in self.db.methods[cls] or self._polymorphic(cls, key):
                return Resolution("framework", cls)
            up = self.db.parents.get(cls, []) or ([OBJECT] if cls != OBJECT else [])
        else:
            return None
        for parent in up:
            r = self._find(parent, key, seen)
            if r is not None:
                return r
        return None

    def _polymorphic(self, cls: str, key: str) -> bool:
        """MethodHandle.invoke/invokeExact and VarHandle accessors take any call-site descriptor."""
        return cls in ("Ljava/lang/invoke/MethodHandle;", "Ljava/lang/invoke/VarHandle;") and any(
            m.startswith(key.partition("(")[0] + "(") for m in self.db.methods[cls])

    def _unknown(self, cls: str) -> bool:
        """True when the lookup from `cls` reaches a class in neither the dex nor the DB."""
        todo, seen = [cls], set()
        while todo:
            c = todo.pop()
            if c in seen:
                continue
            seen.add(c)
            if c in self.classes:
                d = self.classes[c]
                todo += ([d.superclass] if d.superclass else []) + d.interfaces
            elif c not in self.db.methods:
                return True
        return False

    def extends_any(self, cls: str, base: str) -> bool:
        """`base` is `cls` or one of its supertypes (superclasses and interfaces) in the DB."""
        todo, seen = [cls], set()
        while todo:
            c = todo.pop()
            if c == base:
                return True
            if c not in seen:
                seen.add(c)
                todo += self.db.parents.get(c, [])
        return base == OBJECT

    def extends(self, cls: str, base: str) -> bool:
        seen = set()
        while cls and cls not in seen:
            if cls == base:
                return True
            seen.add(cls)
            c = self.classes.get(cls)
            cls = c.superclass if c else (self.db.parents.get(cls) or [None])[0]
        return False


def check_dex(dex_files: list[bytes], db: FrameworkDB, app_package: str,
              activities: tuple[str, ...] = ()) -> ApiReport:
    classes: dict[str, ClassDef] = {}
    for data in dex_files:
        classes.update(dex.classes(data))
    resolver = Resolver(classes, db)
    app_prefix = "L" + app_package.replace(".", "/") + "/"
    report = ApiReport()
    framework, android, missing, unknown = set(), set(), set(), set()
    for caller in sorted(classes.values(), key=lambda c: c.name):
        from_app = caller.name.startswith(app_prefix)
        for ref in sorted(caller.calls, key=str):
            r = resolver.resolve(ref.cls, ref.name, ref.desc)
            if r.status == "framework":
                framework.add(str(ref))
                if ref.cls.startswith(FRAMEWORK_PREFIXES) or r.where.startswith(FRAMEWORK_PREFIXES):
                    android.add(str(ref))
            elif r.status in ("missing", "unknown-class"):
                platform = ref.cls.startswith(FRAMEWORK_PREFIXES) or r.where.startswith(FRAMEWORK_PREFIXES)
                if from_app or platform:
                    missing.add(f"{_readable(ref)} ({r.status.replace('-', ' ')}) from {_java(caller.name)}")
                elif r.status == "unknown-class":
                    unknown.add(_java(r.where))
    report.framework_calls, report.android_calls = sorted(framework), sorted(android)
    report.missing, report.library_unknown = sorted(missing), sorted(unknown)
    for name in activities:
        d = _desc(name)
        if d not in classes:
            report.component_errors.append(f"activity {name} is not in the dex")
        elif not resolver.extends(d, "Landroid/app/Activity;"):
            report.component_errors.append(f"activity {name} does not extend android.app.Activity")
        else:
            report.components.append(name)
    return report


def check_stubs(stub_jar: Path, db: FrameworkDB) -> tuple[int, list[str]]:
    """Every public/protected method of the stub jar (android.R aside) must exist in the framework
    DB on that class or a supertype, and each stub class must have the framework's supertypes.
    Returns (methods checked, problems)."""
    with zipfile.ZipFile(stub_jar) as z:
        names = sorted(n[:-6].replace("/", ".") for n in z.namelist()
                       if n.endswith(".class") and not n.startswith("android/R"))
    text = run(["javap", "-protected", "-s", "-cp", stub_jar, *names], "javap (stubs)").stdout
    resolver = Resolver({}, db)
    problems, checked, cls, member = [], 0, None, None
    for line in text.splitlines():
        while "<" in line and re.search(r"<[^<>]*>", line):  # drop type parameters (a class header)
            line = re.sub(r"<[^<>]*>", "", line)
        head = re.match(r"^(?:public |protected |abstract |final |static )*(?:class|interface) (\S+)"
                        r"(?: extends ([^{]+?))?(?: implements ([^{]+?))? \{", line)
        if head:
            cls = _desc(head.group(1))
            supers = [_desc(t.strip()) for g in (head.group(2), head.group(3)) if g for t in g.split(",")]
            if cls not in db.methods:
                problems.append(f"stub class {head.group(1)} is not a framework class")
            for sup in supers:
                if cls in db.methods and not resolver.extends_any(cls, sup):
                    problems.append(f"stub {head.group(1)} extends {_java(sup)}, the framework's does not")
            continue
        desc = re.match(r"^\s+descriptor: (\(.*)$", line)
        if desc and member and cls in db.methods:
            checked += 1
            if resolver.resolve(cls, member, desc.group(1)).status != "framework":
                problems.append(f"stub method {_java(cls)}.{member}{desc.group(1)} is not in the framework")
        m = re.match(r"^\s+[^(]*?(\S+)\(", line)
        member = None if not m else "<init>" if _desc(m.group(1)) == cls else m.group(1)
    return checked, problems


def _java(desc: str) -> str:
    return desc[1:-1].replace("/", ".") if desc.startswith("L") else desc


def _readable(ref: MethodRef) -> str:
    return f"{_java(ref.cls)}.{ref.name}{ref.desc}"


def dex_bytes(path: Path) -> list[bytes]:
    if path.suffix == ".dex":
        return [path.read_bytes()]
    try:
        with zipfile.ZipFile(path) as z:
            names = sorted(n for n in z.namelist() if n.startswith("classes") and n.endswith(".dex"))
            if not names:
                raise ToolError(f"{path} holds no classes.dex",
                                "build the APK with android_demo/tools/build.py")
            return [z.read(n) for n in names]
    except (OSError, zipfile.BadZipFile) as e:
        raise ToolError(f"cannot read {path}: {e}", "pass an .apk or .dex file") from None


def check(path: Path, app_package: str | None = None, activities: tuple[str, ...] | None = None,
          tools: Tools | None = None) -> ApiReport:
    tools = tools or Tools.locate()
    if app_package is None or activities is None:
        cfg = AppConfig.read()
        app_package = cfg.namespace if app_package is None else app_package
        activities = cfg.activities if activities is None else activities
    return check_dex(dex_bytes(path), FrameworkDB.load(tools), app_package, activities)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path, help="an .apk or a .dex")
    ap.add_argument("--app-package",
                    help="package of the app's own classes (default: namespace in app/build.gradle.kts)")
    ap.add_argument("--activity", action="append", default=None, metavar="CLASS",
                    help="check this activity class instead of the manifest's (repeatable)")
    ap.add_argument("--no-manifest", action="store_true", help="skip the manifest activity check")
    ap.add_argument("--stubs", type=Path, metavar="JAR",
                    help="also check a stub android.jar's methods and supertypes against the DB")
    ap.add_argument("--json", type=Path, help="also write the report as JSON here")
    ap.add_argument("-v", "--verbose", action="store_true", help="list every android ref")
    args = ap.parse_args(argv)
    try:
        activities = () if args.no_manifest else tuple(args.activity) if args.activity else None
        report = check(args.path, args.app_package, activities)
    except ToolError as e:
        return fail("apicheck", e)
    stub_problems = []
    if args.stubs:
        try:
            checked, stub_problems = check_stubs(args.stubs, FrameworkDB.load(Tools.locate()))
        except ToolError as e:
            return fail("apicheck", e)
        for line in stub_problems:
            print(f"STUB    {line}")
        print(("PASS" if not stub_problems else "FAIL") + f" stubs: {checked} stub methods checked, "
              f"{len(stub_problems)} problems")
    if args.verbose:
        for ref in report.android_calls:
            print(f"OK      {ref}")
    for line in report.missing + report.component_errors:
        print(f"MISSING {line}")
    if report.library_unknown:
        print(f"note: libraries call {len(report.library_unknown)} classes that neither the dex nor the "
              f"framework has (not checked): {', '.join(report.library_unknown[:5])}")
    if args.json:
        args.json.write_text(json.dumps(vars(report), indent=2) + "\n")
    print(("PASS" if report.ok else "FAIL") + f" apicheck: {report.summary()}")
    return 0 if report.ok and not stub_problems else 1


if __name__ == "__main__":
    sys.exit(main())
