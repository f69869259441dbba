"""`flora-export --push`: an Android export copied to a device with the real `adb` client.

The device is tests/fake_adbd.py, a TEST DOUBLE of adbd whose files live on this host
(no phone or emulator here), so the "device directory" is a host path below the fake
device's root (--push-to), and what arrives there can be compared byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
from pathlib import Path

import pytest

from flora_export import cli
from flora_export.adb import AdbDevice, choose_device, parse_devices
from flora_export.errors import FloraError
from flora_export.export.push import (_verify, check_pushable, open_command, push_export,
                                      remote_dir_for)

DEVICES = """List of devices attached
R58M12345\tdevice
emulator-5554\tunauthorized
192.168.1.7:5555\toffline

"""


def _digests(root: Path) -> dict[str, str]:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


def test_device_choice_names_the_problem_and_the_fix():
    devs = parse_devices("* daemon started successfully\n" + DEVICES)
    assert devs == [("R58M12345", "device"), ("emulator-5554", "unauthorized"),
                    ("192.168.1.7:5555", "offline")]
    assert choose_device(devs, "R58M12345") == "R58M12345"
    assert choose_device(devs[:1], None) == "R58M12345"
    with pytest.raises(FloraError, match="3 Android devices are connected.*--serial SERIAL"):
        choose_device(devs, None)
    with pytest.raises(FloraError, match="no Android device is connected.*USB debugging"):
        choose_device([], None)
    with pytest.raises(FloraError, match="device XYZ is not connected"):
        choose_device(devs, "XYZ")
    with pytest.raises(FloraError, match="emulator-5554 is unauthorized.*accept"):
        choose_device(devs, "emulator-5554")
    with pytest.raises(FloraError, match="the adb client .* is not installed.*apt-get install adb"):
        AdbDevice(adb="/nonexistent/adb").select()


def test_only_android_exports_are_pushed_and_paths_are_checked():
    check_pushable("android")
    for target in ("onnx", "ios", "coreml"):
        with pytest.raises(FloraError, match="use --push with --target android"):
            check_pushable(target)
    assert remote_dir_for(Path("/x/out/phone")) == "/data/local/tmp/flora/phone"
    assert remote_dir_for(Path("x"), "/sdcard/m/") == "/sdcard/m"
    with pytest.raises(FloraError, match="not an absolute path"):
        remote_dir_for(Path("x"), "relative/dir")
    assert open_command("/data/local/tmp/flora/my model", "R5") == (
        "adb -s R5 shell am start -n dev.flora.chat/.ChatActivity --es model "
        "'/data/local/tmp/flora/my model'")


def test_push_copies_an_export_byte_identical(fake_phone, bench_et_export):
    serial, daemon = fake_phone
    device = AdbDevice(serial)
    assert device.select() == serial
    remote = daemon.workdir / "data" / "local" / "tmp" / "flora" / "et"
    remote.mkdir(parents=True)
    (remote / "stale.bin").write_bytes(b"old")                  # an earlier push is replaced
    got = push_export(bench_et_export, device, str(remote))
    assert got["check"] == "sha256" and got["files"] == len(_digests(bench_et_export)) >= 3
    assert _digests(remote) == _digests(bench_et_export)         # byte-identical, nothing else
    assert not Path(f"{remote}.partial").exists()
    for f in [remote, *remote.iterdir()]:                        # readable by the app's user
        assert f.stat().st_mode & stat.S_IROTH
    (remote / "model.pte").write_bytes(b"corrupted")
    with pytest.raises(FloraError, match="model.pte differs on the device"):
        _verify(device, str(remote), {"model.pte": bench_et_export / "model.pte"})


def test_cli_push_after_export(fake_phone, bench_et_export, tmp_path, monkeypatch, capsys):
    """The CLI from argument checks to the printed adb command. The export stage is
    replaced by a copy of the session's tiny ExecuTorch export (the export itself is
    covered by test_export_executorch.py; this test is about what --push does after it)."""
    serial, daemon = fake_phone
    out = tmp_path / "phone"

    def exported(args, out_dir):
        shutil.copytree(bench_et_export, out)
        return json.loads((out / "manifest.json").read_text()), 0.1
    monkeypatch.setattr(cli, "_run", exported)
    remote = daemon.workdir / "data" / "local" / "tmp" / "flora" / "phone"
    assert cli.main(["--target", "android", "--out", str(out), "--push", "--serial", serial,
                     "--push-to", str(remote)]) == 0
    printed = capsys.readouterr().out
    assert f"adb -s {serial} shell am start -n dev.flora.chat/.ChatActivity --es model " \
           f"{remote}" in printed and "sha256 checked" in printed
    assert _digests(remote) == _digests(out)


@pytest.mark.parametrize("argv, message", [
    (["--target", "onnx", "--push"], "use --push with --target android"),
    (["--target", "android", "--serial", "R5"], "only apply with --push"),
    (["--target", "android", "--push", "--serial", "NOPE"], "device NOPE is not connected"),
])
def test_cli_push_errors_before_exporting(fake_phone, argv, message, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_run", lambda args: pytest.fail("exported despite a bad --push"))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flora-export: error:") and message in err[0]
