"""TEST DOUBLE -- a stand-in for the flora chat app's benchmark mode. NOT THE APP.

The real app (android_demo/, package dev.flora.chat, Kotlin + ExecuTorch's LlmModule)
cannot run on this machine: there is no phone, emulator or ART. This script implements,
in Python on THIS host, the app's side of the benchmark-mode contract written in
android_demo/README.md ("Benchmark mode"), so that flora-bench's `--runner app` path can
be tested end to end with the real adb client against tests/fake_adbd.py (itself a test
double of adbd). It is installed on the fake device's PATH as these commands:

    am start -S -W -n dev.flora.chat/.BenchmarkActivity --es model DIR --es run_id ID
             [--es prompts_file F | --es prompt P] [--ei warmup W] [--ei runs N]
             [--ei max_new_tokens G] [--ei cooldown_ms C] [--ez chat_template B]
    am force-stop dev.flora.chat
    pm path dev.flora.chat
    pidof dev.flora.chat:bench

`am start` starts a detached "benchmark process" (this script, `bench` command) and
returns, as the real activity manager does. That process loads the staged .pte with the
REAL ExecuTorch runtime (ExecuTorch's C++ TextLLMRunner through its Python binding),
runs warm-up + runs generations with the extras' settings, keeping the runner's stats
(the "observer") and timing the text itself (the "app clock": the runner prints each
piece to stdout as it is generated, and a thread stamps each chunk as it arrives through
a pipe, this double's onResult callbacks; the Python token callback cannot be used
because it fails on the partial UTF-8 pieces of byte tokens), and writes the
`flora-chat-bench/1` report to <run_id>.json.tmp, then renames it to <run_id>.json under
the device root + /sdcard/Android/data/dev.flora.chat/files/bench. Every figure it
writes is this host's, not a phone's.

State lives under the fake device's root directory (ROOT):
  ROOT/data/app/dev.flora.chat/base.apk   exists = "installed" (pm path prints it)
  ROOT/fake-app-fault                     fault injection for tests: "crash" (the
                                          benchmark process exits without a report) or
                                          "hang" (it sleeps without writing anything)
  ROOT/run/dev.flora.chat:bench.pid       the benchmark process (pidof, force-stop)
  ROOT/fake-app.log                       its stdout and stderr
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

PACKAGE = "dev.flora.chat"
BENCH_ACTIVITY = f"{PACKAGE}/.BenchmarkActivity"
PROCESS = f"{PACKAGE}:bench"
RESULT_DIR = f"sdcard/Android/data/{PACKAGE}/files/bench"      # below ROOT
FIXED_PROMPTS = ["Tell me a short story about a lighthouse keeper."]


def apk(root: Path) -> Path:
    return root / "data" / "app" / PACKAGE / "base.apk"


def install(root: Path) -> None:
    apk(root).parent.mkdir(parents=True, exist_ok=True)
    apk(root).write_bytes(b"TEST DOUBLE: not an APK\n")


def pid_file(root: Path) -> Path:
    return root / "run" / f"{PROCESS}.pid"


def running_pid(root: Path) -> int | None:
    try:
        pid = int(pid_file(root).read_text())
        state = Path(f"/proc/{pid}/status").read_text()
    except (OSError, ValueError):
        return None
    return None if "\nState:\tZ" in state else pid


def parse_extras(args: list[str]) -> tuple[dict, dict]:
    """`am start` arguments -> (flags such as -n, extras by name with their types applied)."""
    flags, extras, i = {}, {}, 0
    while i < len(args):
        a = args[i]
        if a in ("--es", "--ei", "--ez"):
            key, val = args[i + 1], args[i + 2]
            extras[key] = (val if a == "--es" else int(val) if a == "--ei"
                           else val.lower() in ("true", "1"))
            i += 3
        elif a == "-n":
            flags["n"], i = args[i + 1], i + 2
        else:
            flags[a], i = True, i + 1
    return flags, extras


def am(root: Path, args: list[str]) -> int:
    if args[:1] == ["force-stop"]:
        _stop(root)
        return 0
    if args[:1] != ["start"]:
        print(f"Error: the test double's am knows only start and force-stop, not {args[:1]}")
        return 1
    flags, extras = parse_extras(args[1:])
    print(f"Starting: Intent {{ cmp={flags.get('n')} }}")
    if flags.get("n") != BENCH_ACTIVITY or not apk(root).exists():
        print(f"Error type 3\nError: Activity class {{{flags.get('n')}}} does not exist.")
        return 0                      # the real am exits 0 here too
    if flags.get("-S"):
        _stop(root)
    log = open(root / "fake-app.log", "ab")
    proc = subprocess.Popen([sys.executable, __file__, "--root", str(root), "bench",
                             json.dumps(extras)], stdin=subprocess.DEVNULL, stdout=log,
                            stderr=log, start_new_session=True, cwd=root)
    pid_file(root).parent.mkdir(parents=True, exist_ok=True)
    pid_file(root).write_text(str(proc.pid))
    print(f"Status: ok\nLaunchState: COLD\nActivity: {BENCH_ACTIVITY}\nTotalTime: 1\n"
          "WaitTime: 1\nComplete")
    return 0


def _stop(root: Path) -> None:
    pid = running_pid(root)
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def pm(root: Path, args: list[str]) -> int:
    if args == ["path", PACKAGE] and apk(root).exists():
        print(f"package:{apk(root)}")
        return 0
    return 1


def pidof(root: Path, args: list[str]) -> int:
    pid = running_pid(root) if args == [PROCESS] else None
    if pid:
        print(pid)
    return 0 if pid else 1


def _peak_rss_mb() -> float | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def bench(root: Path, extras: dict) -> int:
    """The benchmark process: load once, warm-up + runs, report (status error on failure)."""
    fault = (root / "fake-app-fault").read_text().strip() if (root / "fake-app-fault").exists() \
        else ""
    if fault == "crash":
        os._exit(134)
    if fault == "hang":
        time.sleep(120)
        return 0
    run_id = extras.get("run_id") or f"bench-{int(time.time() * 1e3)}"
    cfg = {"warmup": extras.get("warmup", 1), "runs": extras.get("runs", 5),
           "max_new_tokens": extras.get("max_new_tokens", 64),
           "chat_template": extras.get("chat_template", False),
           "cooldown_ms": extras.get("cooldown_ms", 0)}
    report = {"format": "flora-chat-bench/1", "run_id": run_id, "status": "ok", "error": None,
              "app": {"package": PACKAGE, "version": "0.0-test-double"},
              "device": {"manufacturer": "TestDouble", "model": "FakePhone",
                         "soc": "host (fake app)", "abi": "arm64-v8a", "sdk": 0},
              "model": {"dir": extras.get("model")}, "config": cfg, "load_ms": None, "runs": [],
              "peak_rss_mb": None, "started_ms": int(time.time() * 1e3), "finished_ms": None}
    try:
        _run(extras, cfg, report)
    except Exception as e:  # noqa: BLE001  (the app reports any failure as status "error")
        report["status"], report["error"] = "error", f"{type(e).__name__}: {e}".splitlines()[0]
    report["peak_rss_mb"], report["finished_ms"] = _peak_rss_mb(), int(time.time() * 1e3)
    out = root / RESULT_DIR / f"{run_id}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, out)
    return 0


def _run(extras: dict, cfg: dict, report: dict) -> None:
    model = Path(extras["model"])
    manifest = json.loads((model / "manifest.json").read_text()) \
        if (model / "manifest.json").exists() else {}
    pte, tok = next(model.glob("*.pte"), None), next(model.glob("tokenizer*"), None)
    if pte is None or tok is None:
        raise FileNotFoundError(f"no .pte and tokenizer in {model}")
    report["model"].update(pte=pte.name, tokenizer=tok.name, target=manifest.get("target"),
                           quant=(manifest.get("quantization") or {}).get("name"))
    if "prompts_file" in extras:
        prompts = json.loads(Path(extras["prompts_file"]).read_text())["prompts"]
    else:
        prompts = [extras["prompt"]] if "prompt" in extras else FIXED_PROMPTS
    cfg["prompts"] = prompts
    t0 = time.perf_counter()
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    from flora_export.export.executorch import load_runtime_ops

    load_runtime_ops()
    runner = TextLLMRunner(str(pte), str(tok))
    seq_len = (manifest.get("runtime") or {}).get("max_seq_len", -1)
    report["load_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
    text_out = _TextChunks()
    for i in range(cfg["warmup"] + cfg["runs"]):
        time.sleep(cfg["cooldown_ms"] / 1e3)
        prompt_index = (i if i < cfg["warmup"] else i - cfg["warmup"]) % len(prompts)
        prompt = prompts[prompt_index]
        stats = []
        start = time.perf_counter()
        runner.generate(prompt, GenerationConfig(max_new_tokens=cfg["max_new_tokens"],
                                                 temperature=0.0, echo=False, seq_len=seq_len),
                        stats_callback=stats.append)
        end = time.perf_counter()
        runner.reset()
        stamps, pieces = text_out.take()
        observer = json.loads(stats[-1].to_json_string()) if stats else None
        n = len(stamps)
        ttft = (stamps[0] - start) * 1e3 if stamps else None
        tpot = (stamps[-1] - stamps[0]) * 1e3 / (n - 1) if n > 1 else None
        prompt_tokens = observer["prompt_tokens"] if observer else None
        report["runs"].append({
            "index": i, "warmup": i < cfg["warmup"], "prompt_index": prompt_index,
            "ttft_ms": ttft, "tpot_ms": tpot,
            "prefill_tps": prompt_tokens / ttft * 1e3 if prompt_tokens and ttft else None,
            "decode_tps": 1e3 / tpot if tpot else None, "prompt_tokens": prompt_tokens,
            "generated_tokens": n, "wall_ms": (end - start) * 1e3, "text": "".join(pieces),
            "observer": observer})


class _TextChunks:
    """fd 1 into a pipe; a thread stamps each chunk of runner output as it arrives."""

    MARK = b"\x00end-of-generation\x00"

    def __init__(self):
        sys.stdout.flush()
        read, write = os.pipe()
        os.dup2(write, 1)
        os.close(write)
        self.read, self.chunks, self.cv = read, [], threading.Condition()
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self) -> None:
        while chunk := os.read(self.read, 65536):
            with self.cv:
                self.chunks.append((time.perf_counter(), chunk))
                self.cv.notify_all()

    def take(self) -> tuple[list[float], list[str]]:
        """Stamps and text of the chunks of the last generation (the stats line left out)."""
        os.write(1, self.MARK)
        with self.cv:
            self.cv.wait_for(lambda: self.chunks and self.chunks[-1][1].endswith(self.MARK), 60)
            got, self.chunks = self.chunks, []
        stamps, pieces, ended = [], [], False
        for t, chunk in got:
            text = chunk.replace(self.MARK, b"").decode(errors="replace")
            if "PyTorchObserver" in text:
                text, ended = text.split("PyTorchObserver")[0], True
            if text and not (ended and not text.strip()):
                stamps.append(t)
                pieces.append(text)
            if ended:
                break
        return stamps, pieces


def main(argv: list[str]) -> int:
    if argv[:1] != ["--root"] or len(argv) < 3:
        print("usage: fake_flora_app.py --root DIR am|pm|pidof|bench ARGS", file=sys.stderr)
        return 2
    root, cmd, args = Path(argv[1]), argv[2], argv[3:]
    if cmd == "bench":
        return bench(root, json.loads(args[0]))
    return {"am": am, "pm": pm, "pidof": pidof}[cmd](root, args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
