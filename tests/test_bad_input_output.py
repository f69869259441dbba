"""Hostile output paths for all four console scripts: nothing the user owns is deleted or
overwritten, every refusal is one line before the work starts, and no staging folder,
`.old` folder or temporary log is left behind, not even after SIGTERM.

Mount points, read-only and full file systems are real mounts (bind mounts and small
tmpfs), which needs root; without root those cases skip. Cases that need a finished
export copy one real export of the tiny preset (fp32, the quickest) into place through
the same staging and commit code that export() runs after building.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flora_export import eval_cli
from flora_export.bench import cli as bench_cli
from flora_export.cli import main as export_main
from flora_export.errors import FloraError
from flora_export.export.outdir import (FORMAT, MANIFEST, export_names, is_mount_point,
                                        plan_out_dir, staging_dir)
from flora_export.train import cli as train_cli
from flora_export.train.checkpoint import drop_checkpoint, has_checkpoint, save_checkpoint

BACKENDS = ("executorch-xnnpack",)
TINY = ["--target", "android", "--model", "tiny", "--adapter", "none", "--quant", "fp32",
        "--max-seq", "64"]


def _can_mount() -> bool:
    """Root with the right to mount (a container without CAP_SYS_ADMIN has not)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    import tempfile
    d = tempfile.mkdtemp(prefix="flora-mount-probe-")
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", d],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", d], capture_output=True)
        return ok
    finally:
        os.rmdir(d)


needs_root = pytest.mark.skipif(not _can_mount(), reason="needs root with the right to mount "
                                "(bind mounts, tmpfs)")


# ---------------------------------------------------------------- helpers


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under `folder` with its bytes (None for a folder), links as links."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = (f"-> {os.readlink(p)}".encode() if p.is_symlink() else
                    None if p.is_dir() else p.read_bytes())
    return out


def leftovers(*folders: Path) -> list[str]:
    """Staging, trash or `.old` folders of ours in `folders` (there must be none)."""
    return [str(p) for f in folders if Path(f).is_dir() for p in Path(f).iterdir()
            if "flora-staging" in p.name or "flora-old" in p.name or ".old" in p.name
            or ".tmp" in p.name]


def refused(capfd, code: int, *expect: str) -> str:
    """The one stderr line of a refusal (exit 2, no traceback), containing `expect`."""
    out, err = capfd.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for e in expect:
        assert e in lines[0], lines[0]
    return lines[0] + "\n" + out


def export_refused(capfd, out: Path, *args: str, expect=()) -> None:
    """flora-export refuses `out` before it loads the model; `out` stays as it was."""
    before = snapshot(out) if out.is_dir() else None
    text = refused(capfd, export_main([*TINY, *args, "--out", str(out)]), *expect)
    assert "loading model" not in text, text          # refused before any work
    if before is not None:
        assert snapshot(out) == before


def put_export(src: Path, out: Path, force: bool = False, stamp: str = "new") -> None:
    """What export() does after building: plan `out`, stage the files, commit. The staged
    files are a real export's (its manifest stamped so the new one can be told apart)."""
    plan = plan_out_dir(out, BACKENDS, force)
    with staging_dir(plan) as tmp:
        for p in src.iterdir():
            shutil.copy2(p, tmp / p.name)
        m = json.loads((tmp / MANIFEST).read_text())
        (tmp / MANIFEST).write_text(json.dumps({**m, "created_utc": stamp}))


def stamp_of(folder: Path) -> str:
    return json.loads((folder / MANIFEST).read_text())["created_utc"]


@pytest.fixture(scope="session")
def real_export(tmp_path_factory) -> Path:
    """One real export of the tiny preset through the console entry point."""
    out = tmp_path_factory.mktemp("real") / "export"
    assert export_main([*TINY, "--out", str(out)]) == 0
    return out


@pytest.fixture
def previous(real_export, tmp_path) -> Path:
    """A previous export in a folder of its own."""
    out = tmp_path / "previous"
    shutil.copytree(real_export, out)
    return out


@pytest.fixture
def mount(tmp_path):
    """mount(*args, target): a real mount, undone after the test."""
    done = []

    def do(*args: str) -> Path:
        target = Path(args[-1])
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", *args], check=True, capture_output=True)
        done.append(target)
        return target

    yield do
    for target in reversed(done):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


# ---------------------------------------------------------------- the user's files


def test_export_manifest_has_the_format_marker_and_only_predicted_names(real_export):
    m = json.loads((real_export / MANIFEST).read_text())
    assert m["format"] == FORMAT and m["format_version"] == 1
    assert {p.name for p in real_export.iterdir()} <= export_names(BACKENDS)
    assert leftovers(real_export, real_export.parent) == []


@pytest.mark.parametrize("force", [False, True])
def test_user_files_and_a_manifest_json_without_marker(capfd, tmp_path, force):
    """A file named manifest.json is not a previous export: refused, also with --force
    (the export would overwrite the user's manifest.json)."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "manifest.json").write_text('{"files": {"notes.txt": {}}, "format_version": 1}')
    (out / "notes.txt").write_text("mine")
    export_refused(capfd, out, *(["--force"] if force else []),
                   expect=("manifest.json", "did not write", str(out)))


def test_user_folder_is_refused_and_force_writes_beside_the_files(capfd, real_export, tmp_path):
    out = tmp_path / "mine"
    (out / "data").mkdir(parents=True)
    (out / "data" / "x.bin").write_bytes(b"\0\1")
    (out / "notes.txt").write_text("mine")
    export_refused(capfd, out, expect=("notes.txt", "data", "--force"))
    mine = snapshot(out)
    put_export(real_export, out, force=True)
    assert {k: v for k, v in snapshot(out).items() if k in mine} == mine
    assert (out / "model.pte").read_bytes() == (real_export / "model.pte").read_bytes()
    assert leftovers(out, tmp_path) == []


def test_previous_export_with_user_files_is_refused_and_force_keeps_them(capfd, previous,
                                                                         real_export, tmp_path):
    (previous / "my-notes.md").write_text("keep me")
    (previous / "eval").mkdir()
    (previous / "eval" / "result.json").write_text("{}")
    export_refused(capfd, previous, expect=("previous export", "my-notes.md", "eval"))
    put_export(real_export, previous, force=True)
    assert (previous / "my-notes.md").read_text() == "keep me"
    assert (previous / "eval" / "result.json").read_text() == "{}"
    assert stamp_of(previous) == "new"
    assert leftovers(previous, tmp_path) == []


def test_previous_export_is_replaced_with_only_its_own_files(previous, real_export, tmp_path):
    """Swap: the new export takes the folder's place; nothing but the old export's files
    was there, so nothing else is removed, and no staging or .old folder remains."""
    put_export(real_export, previous)
    assert stamp_of(previous) == "new"
    assert {p.name for p in previous.iterdir()} == {p.name for p in real_export.iterdir()}
    assert leftovers(previous, tmp_path) == []


def test_legacy_manifest_without_marker_is_a_previous_export(previous, real_export):
    m = json.loads((previous / MANIFEST).read_text())
    del m["format"]
    (previous / MANIFEST).write_text(json.dumps(m))
    put_export(real_export, previous)
    assert stamp_of(previous) == "new"


def test_changed_export_file_and_hostile_manifest_names(capfd, previous, real_export, tmp_path):
    """A file of the export whose size changed is refused without --force; names in a
    manifest that are paths (../victim) never make flora-export touch anything outside."""
    victim = tmp_path / "victim.txt"
    victim.write_text("outside")
    m = json.loads((previous / MANIFEST).read_text())
    m["files"]["../victim.txt"] = {"bytes": 7}
    m["files"]["/etc/hostname"] = {"bytes": 1}
    (previous / MANIFEST).write_text(json.dumps(m))
    with open(previous / "tokenizer.json", "a") as f:
        f.write(" ")
    export_refused(capfd, previous, expect=("tokenizer.json", "changed since the export"))
    put_export(real_export, previous, force=True)
    assert victim.read_text() == "outside" and stamp_of(previous) == "new"


def test_foreign_entry_with_an_export_name_is_never_overwritten(capfd, previous, tmp_path):
    """A folder of the user's named like a file the export writes: refused even with
    --force, since --force never deletes the user's files."""
    (previous / "model.pte").unlink()
    (previous / "model.pte").mkdir()
    (previous / "model.pte" / "mine.txt").write_text("x")
    export_refused(capfd, previous, "--force", expect=("model.pte", "never overwrites"))


# ---------------------------------------------------------------- paths


def test_out_is_a_file_under_a_file_or_empty(capfd, tmp_path):
    f = tmp_path / "file.bin"
    f.write_bytes(b"data")
    export_refused(capfd, f, expect=(str(f), "is a file"))
    export_refused(capfd, f / "sub", expect=(str(f), "is a file"))
    refused(capfd, export_main([*TINY, "--out", ""]), "--out is empty")
    assert f.read_bytes() == b"data"


def test_symlink_to_previous_export_keeps_the_link(previous, real_export, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(previous)
    put_export(real_export, link)
    assert link.is_symlink() and os.readlink(link) == str(previous)
    assert stamp_of(previous) == "new"
    assert leftovers(tmp_path, previous) == []


def test_symlink_to_empty_dir_is_written_into(real_export, tmp_path):
    target = tmp_path / "volume"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    put_export(real_export, link)
    assert link.is_symlink() and stamp_of(target) == "new"
    assert leftovers(tmp_path, target) == []


def test_dangling_symlink_is_refused(capfd, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    export_refused(capfd, link, expect=("symbolic link", "does not exist"))
    assert not (tmp_path / "nowhere").exists()


# ---------------------------------------------------------------- mounts and disks


@needs_root
def test_writable_mount_point_is_written_in_place(mount, previous, real_export, tmp_path):
    """A docker -v style bind mount (same file system: os.path.ismount misses it) cannot
    be renamed; the export's files are swapped inside it, the mount stays."""
    vol = mount("--bind", str(previous), str(tmp_path / "vol"))
    assert is_mount_point(vol)
    plan = plan_out_dir(vol, BACKENDS)
    assert plan.mode == "inplace"
    put_export(real_export, vol)
    assert is_mount_point(vol) and stamp_of(vol) == "new"
    assert leftovers(vol, tmp_path) == []


def test_mount_point_logic_without_mounting(monkeypatch, previous, real_export, tmp_path):
    """The same case where mounting is not allowed, through the documented seam
    `outdir.is_mount_point` (a rename of a real mount point fails with EBUSY)."""
    from flora_export.export import outdir

    assert plan_out_dir(previous, BACKENDS).mode == "swap"
    monkeypatch.setattr(outdir, "is_mount_point", lambda p: Path(p) == previous)
    assert plan_out_dir(previous, BACKENDS).mode == "inplace"
    ino = previous.stat().st_ino
    put_export(real_export, previous)
    assert previous.stat().st_ino == ino and stamp_of(previous) == "new"
    assert leftovers(previous, tmp_path) == []


@needs_root
def test_export_into_a_mount_point_with_user_files_and_force(capfd, mount, previous, tmp_path):
    """The whole command: a real export into a bind mount holding a previous export and a
    file of the user's, with --force: exit 0, the user's file untouched."""
    (previous / "keep.txt").write_text("mine")
    vol = mount("--bind", str(previous), str(tmp_path / "vol"))
    old = stamp_of(vol)
    assert export_main([*TINY, "--out", str(vol), "--force"]) == 0
    assert (vol / "keep.txt").read_text() == "mine" and stamp_of(vol) != old
    names = {p.name for p in vol.iterdir()} - {"keep.txt"}
    assert {"manifest.json", "model.pte", "tokenizer.json"} <= names <= export_names(BACKENDS)
    assert leftovers(vol, tmp_path) == []


@needs_root
def test_read_only_mount_point_and_parent_are_refused_before_work(capfd, mount, previous,
                                                                  tmp_path):
    vol = mount("--bind", str(previous), str(tmp_path / "vol"))
    subprocess.run(["mount", "-o", "remount,bind,ro", str(vol)], check=True)
    export_refused(capfd, vol, expect=(str(vol), "Read-only file system"))
    ro = mount("-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(tmp_path / "ro"))
    export_refused(capfd, ro / "export", expect=(str(ro), "Read-only file system"))


@needs_root
def test_full_disk_is_refused_before_loading(capfd, mount, tmp_path):
    small = mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tmp_path / "small"))
    line = refused(capfd, export_main([*TINY, "--out", str(small / "export")]),
                   str(small), "bytes needed", "bytes free")
    assert "loading model" not in line
    assert list(small.iterdir()) == []


@needs_root
def test_disk_filling_up_during_the_write_is_one_line(mount, real_export, tmp_path):
    """Another process fills the disk after the check: ENOSPC while staging becomes one
    FloraError naming the path; the staging folder is removed, the filler untouched."""
    disk = mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(tmp_path / "disk"))
    filler = disk / "other-process.bin"
    filler.write_bytes(b"\0" * (shutil.disk_usage(disk).free - (256 << 10)))
    with pytest.raises(FloraError, match="no space left") as e:
        put_export(real_export, disk / "export")
    assert str(disk / "export") in str(e.value)
    assert sorted(p.name for p in disk.iterdir()) == ["other-process.bin"]


# ---------------------------------------------------------------- signals


def test_sigterm_during_lowering_cleans_up(tmp_path):
    """SIGTERM while the program is being lowered: exit 143, one line, no staging folder,
    no output, no log file left in the temporary directory."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    out = tmp_path / "out"
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "flora_export.cli", *TINY, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "lower ..." in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, "".join(seen) + rest + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "terminated (SIGTERM)" in lines[0], err
    assert not out.exists() and leftovers(tmp_path) == []
    assert [p.name for p in tmpdir.iterdir() if p.name.startswith("flora-export-")] == []


# ---------------------------------------------------------------- flora-train, -eval, -bench


def test_train_out_is_a_file_or_holds_the_users_model(capfd, tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("mine")
    recipe = "recipes/default-adapter.yaml"
    refused(capfd, train_cli.main([recipe, "--set", f"out={f}"]), str(f), "is a file")
    base = tmp_path / "my-base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    refused(capfd, train_cli.main([recipe, "--set", f"out={base}", "--set", "method.kind=full"]),
            "config.json", "would overwrite")
    assert f.read_text() == "mine" and sorted(p.name for p in base.iterdir()) == ["config.json"]


def test_train_checkpoint_swap_survives_a_cut_and_drop_keeps_user_files(tmp_path):
    w = torch.nn.Parameter(torch.arange(3.0))
    opt = torch.optim.AdamW([w])
    w.grad = torch.ones(3)
    opt.step()
    save_checkpoint(tmp_path, 4, {"w": w}, opt, {"r": 1})
    save_checkpoint(tmp_path, 5, {"w": w}, opt, {"r": 1})
    assert leftovers(tmp_path) == []
    os.replace(tmp_path / "checkpoint", tmp_path / ".checkpoint.old")  # cut between renames
    assert has_checkpoint(tmp_path)
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 5
    (tmp_path / "checkpoint" / "mine.txt").write_text("x")
    drop_checkpoint(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["mine.txt"]


def test_eval_json_at_a_directory_or_a_users_file_before_evaluating(capfd, tmp_path):
    """--json is checked before anything is loaded: the missing --model is not reached."""
    mine = tmp_path / "notes.json"
    mine.write_text("mine")
    args = ["--model", str(tmp_path / "no-such-model"), "--task", "shift"]
    refused(capfd, eval_cli.main([*args, "--json", str(tmp_path)]), "--json", "is a directory")
    refused(capfd, eval_cli.main([*args, "--json", str(mine)]), "not written by")
    refused(capfd, eval_cli.main([*args, "--json", ""]), "--json is empty")
    assert mine.read_text() == "mine"


@needs_root
def test_eval_json_on_unwritable_and_full_disks(capfd, mount, tmp_path):
    ro = mount("-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(tmp_path / "ro"))
    refused(capfd, eval_cli.main(["--model", str(tmp_path / "none"), "--task", "shift",
                                  "--json", str(ro / "r.json")]), "Read-only file system")
    full = mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tmp_path / "full"))
    (full / "filler").write_bytes(b"\0" * shutil.disk_usage(full).free)
    refused(capfd, eval_cli.main(["--task", "shift", "-n", "2", "--show", "0",
                                  "--json", str(full / "r.json")]),
            str(full / "r.json"), "no space left")
    assert sorted(p.name for p in full.iterdir()) == ["filler"]


def test_bench_out_is_a_file_or_holds_the_users_files_before_any_run(capfd, tmp_path):
    """The empty artifact folder would fail the first run: the --out error comes first."""
    art = tmp_path / "not-an-export"
    art.mkdir()
    f = tmp_path / "results"
    f.write_text("mine")
    refused(capfd, bench_cli.main([str(art), "--out", str(f)]), str(f), "is a file")
    d = tmp_path / "bench-out"
    d.mkdir()
    (d / "bench.md").write_text("my notes")
    refused(capfd, bench_cli.main([str(art), "--out", str(d)]), "bench.md", "not written by")
    assert f.read_text() == "mine" and (d / "bench.md").read_text() == "my notes"


def test_staging_left_by_a_killed_process_is_removed(previous, real_export, tmp_path):
    """SIGKILL cannot be handled: the next run removes the staging and trash folders of a
    process that no longer exists, and nothing else."""
    dead = 2 ** 22 + 12345                      # above the kernel's pid_max: never alive
    beside = tmp_path / f".previous.flora-staging-{dead}-abc123"
    inside = previous / f".flora-old-{dead}-xyz"
    lookalike = tmp_path / ".previous.flora-staging-notes"
    for d in (beside, inside, lookalike):
        d.mkdir()
        (d / "f").write_text("x")
    put_export(real_export, previous)
    assert not beside.exists() and not inside.exists() and (lookalike / "f").exists()
