"""`flora-export verify DIR [--device ssh:HOST]`: re-run an export's runtime check elsewhere.

The export stored its verification sequence and, per backend, the eager logits its
runtime was checked against (verify_reference.safetensors). Here the artifact runs
through the same prefill + decode steps on another machine (flora_export/board.py, sent
to the board on stdin: it needs only the runtime, numpy and safetensors there), the
logits come back, and verify.py's compare/check apply the thresholds the export recorded
in its manifest. Exit 0: every backend passed; 1: a backend does not match; 2: bad input,
or a board that cannot run the runtime (said in one line, before anything runs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import FloraError

PROG = "flora-export verify"
MANIFEST = "manifest.json"

EPILOG = """\
examples:
  flora-export verify flora-out/android
      re-run the check on this machine
  flora-export verify flora-out/android --device ssh:pi@board.local
      on an arm64 Linux board (Raspberry Pi 5, Jetson, ...: python3 with the runtime wheels;
      ExecuTorch's aarch64 build needs ARMv8.1+ with LSE atomics, so not a Pi 3/4)
  flora-export verify flora-out/onnx --device ssh:root@127.0.0.1 --ssh-port 2264 \\
      --ssh-identity /opt/flora-arm64/ssh/id_ed25519 \\
      --ssh-known-hosts /opt/flora-arm64/ssh/known_hosts
      on the emulated arm64 board of .ci/arm64-board.sh (docs/arm64.md)
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Re-run an export's runtime verification (prefill + decode steps against "
                    "the eager logits stored in the export, with the export's thresholds) on "
                    "this machine or on a board over ssh.")
    p.add_argument("dirs", nargs="+", metavar="DIR",
                   help="flora-export output directories (several: one board session)")
    p.add_argument("--device", default="host",
                   help="host (default), ssh:[USER@]HOST, or android[:SERIAL] (refused: needs "
                        "an Android build of the step runner)")
    p.add_argument("--ssh-port", type=int, metavar="N")
    p.add_argument("--ssh-identity", metavar="KEY", help="private key for ssh")
    p.add_argument("--ssh-known-hosts", metavar="FILE",
                   help="known_hosts file holding the board's host key (checked strictly)")
    p.add_argument("--remote-python", default="python3", metavar="CMD",
                   help="python on the board with the runtime wheels (default python3)")
    p.add_argument("--threads", type=int, default=0, help="runtime threads (default: runtime's)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the full result as JSON")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    from .console import run_command

    args = build_parser().parse_args(argv)
    return run_command(PROG, args.verbose, lambda: verify(args))


def load_export(folder: Path) -> tuple[dict, list[str]]:
    from .board import ENGINES, REFERENCE

    if not (folder / MANIFEST).is_file():
        raise FloraError(f"{folder} is not a flora-export output (no {MANIFEST})",
                         "pass the --out directory of a flora-export run")
    manifest = json.loads((folder / MANIFEST).read_text())
    record = manifest.get("verify_reference")
    if not record or not (folder / REFERENCE).is_file():
        if manifest.get("backends") == ["coreml"]:
            raise FloraError("a Core ML package is verified on macOS",
                             f"run python -m flora_export.export.coreml_parity {folder}")
        raise FloraError(f"{folder} holds no {REFERENCE} (exported by an older flora-export)",
                         "export it again with this version")
    backends = [b for b in manifest["backends"] if b in ENGINES and b in record["positions"]]
    return manifest, backends


# ARM64 allowance on the lowering gate's SQNR threshold, per engine, in dB: ONNX Runtime's
# ARM int4 MatMulNBits kernels (int8 dot product / i8mm) quantize activations differently
# from its x86 ones, which costs up to 5.1 dB of SQNR against the eager model (trained
# default: 30.7 dB on ARM where x86 measured 35.7); ExecuTorch's KleidiAI kernels (dot
# product / i8mm) cost up to 1.25 dB (unmerged LoRA on tiny: 39.2 vs 40.4 dB). Each is the
# largest drop rounded up to 0.5 dB. Measured by benchmarks/arm64_spread.py ->
# benchmarks/results/arm64_spread.json ("derived"; tests/test_verify_cli.py keeps these
# equal to it; docs/arm64.md has the table).
ARM64_SQNR_ALLOWANCE_DB = {"executorch": 1.5, "onnxruntime": 5.5, "ort-genai": 5.5}


def thresholds(manifest: dict, backend: str, engine: str, board_facts: dict) -> dict:
    """The thresholds the export applied to this backend (from its manifest); on an
    aarch64 board a quantized export's SQNR threshold less the engine's measured ARM64
    allowance (ARM64_SQNR_ALLOWANCE_DB)."""
    t = dict(manifest["results"][backend]["parity"]["thresholds"])
    allowance = ARM64_SQNR_ALLOWANCE_DB.get(engine, 0.0)
    if board_facts["arch"] in ("aarch64", "arm64") and "min_sqnr_db" in t and allowance:
        t["min_sqnr_db"] = round(t["min_sqnr_db"] - allowance, 3)
        t["arm64_sqnr_allowance_db"] = allowance
    return t


def judge(manifest: dict, backend: str, engine: str, reference, got, facts: dict) -> dict:
    """verify.py's compare + check on one backend; the record for the report."""
    from .verify import VerifyConfig, check, compare

    t = thresholds(manifest, backend, engine, facts)
    cfg = VerifyConfig(**{k: v for k, v in t.items() if k in VerifyConfig.__dataclass_fields__})
    quantized = "fp32_atol" not in t
    parity = compare(list(reference), list(got), cfg.decisive_k, cfg.min_sqnr_db)
    what = (f"the {backend} artifact in {engine} on {facts['arch']} "
            f"({facts.get('qemu_cpu') or facts['cpu']})")
    error = None
    try:
        check(parity, quantized, cfg, what)
    except FloraError as e:
        error = e.problem
    record = parity.to_dict()
    record["thresholds"] = t
    return {"parity": record, "passed": error is None, "error": error,
            "export_parity": manifest["results"][backend]["parity"]}


def verify(args) -> int:
    from .export.reference import read_verify_reference
    from . import verify_tokenizer
    from .verify_board import make_board

    folders = [Path(d) for d in args.dirs]
    exports = [(f, *load_export(f)) for f in folders]
    board = make_board(args)
    print(f"verifying {', '.join(map(str, folders))} on {board.name} ...", flush=True)
    probes = [verify_tokenizer.probes(f, m, backends) for f, m, backends in exports]
    reply, logits = board.run([(f, backends, p) for (f, _, backends), p in zip(exports, probes)],
                              args.threads)
    facts = reply["facts"]
    outs, failures = [], []
    for (folder, manifest, backends), got, timing, probe in zip(exports, logits,
                                                                reply["exports"], probes):
        _, _, refs = read_verify_reference(folder / "verify_reference.safetensors")
        answers = timing.pop("tokenizer", {})
        results = {e: {**t, **(judge(manifest, t["backend"], e, refs[t["backend"]], got[e], facts)
                               if "skipped" not in t else {"passed": True})}
                   for e, t in timing.items()}
        tokenizer = {b: verify_tokenizer.judge(folder, manifest, b, probe[b], answers[b])
                     for b in (probe or {})}
        out = {"device": board.name, "facts": facts, "export": str(folder), "results": results,
               "tokenizer": tokenizer}
        failures += [f"{folder}: the {b} runtime's tokenizer on {board.name} differs from "
                     f"Hugging Face's ({verify_tokenizer.summary(r)})"
                     for b, r in tokenizer.items() if not r["passed"]]
        print_report(out)
        outs.append(out)
        failures += [f"{folder}: {r['error']}" for r in results.values() if not r["passed"]]
        if not any("parity" in r for r in results.values()):
            failures.append(f"{folder}: no engine ran")     # never a vacuous pass
    if args.json:
        args.json.write_text(json.dumps(outs if len(outs) > 1 else outs[0], indent=2,
                                        default=str) + "\n")
    if failures:              # one line, exit 1: the artifact does not compute the same
        print(f"{PROG}: failed: {'; '.join(failures)}", file=sys.stderr)
        return 1
    return 0


def print_report(out: dict) -> None:
    f = out["facts"]
    v = f["versions"]
    rows = [("export", out["export"]), ("device", f"{out['device']}: {f['arch']}, {f['cpu']}, {f['cores']} cores"
             + (f", QEMU_CPU={f['qemu_cpu']}" if f.get("qemu_cpu") else "")),
            ("cpu features", f"{' '.join(f['kernel_features']) or '-'} of {len(f['features'])} "
                             f"({f['features_source']})"),
            ("runtimes", ", ".join(f"{k} {x}" for k, x in v.items()))]
    for e, r in out["results"].items():
        name = f"{r['backend']} ({e})"
        if "skipped" in r:
            rows.append((name, f"not run: {r['skipped']}"))
            continue
        verdict = r["parity"].get("verdict")
        state = "FAILED" if not r["passed"] else (
            "passed" if verdict in (None, "passed") else f"passed ({verdict})")
        rows.append((name, f"{state}: {_figures(r['parity'])}; "
                           f"{r['positions']} positions in {r['steps_s']:.1f} s"))
        rows.append(("  export machine", _figures(r["export_parity"])))
        rows.append(("  thresholds", json.dumps(r["parity"]["thresholds"])))
    from .verify_tokenizer import summary

    for b, r in out.get("tokenizer", {}).items():
        rows.append((f"tokenizer ({b})", f"{r.get('runtime', '?')}: {summary(r)}"))
    if not out.get("tokenizer"):
        rows.append(("tokenizer", "no runtime tokenizer gate recorded in the manifest"))
    width = max(len(k) for k, _ in rows)
    print()
    for k, val in rows:
        print(f"  {k:<{width}}  {val}")


def _figures(p: dict) -> str:
    sqnr = p.get("sqnr_db")
    agree = p.get("decisive_agreement")
    return (f"max|diff| {p['max_abs_diff']:.3g}, SQNR "
            f"{'inf' if sqnr is None else format(sqnr, '.1f')} dB, greedy tokens "
            f"{p['token_agreement']:.0%} of {p['steps']} positions ("
            f"{'-' if agree is None else format(agree, '.0%')} of "
            f"{p.get('decisive_steps', 0)} decisive)")


if __name__ == "__main__":
    sys.exit(main())
