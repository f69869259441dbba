"""Interleaved runs (A B C, C B A, A B C ...), statistics and ratios to a baseline.

Sessions that can only run a whole batch (warm-up + runs in one go, like the flora chat
app's benchmark mode: one launch per artifact) have `run_batch`; their artifacts run one
batch after the other in the pass's load order instead of interleaved, and `--passes`
(order reversed each pass) is what balances the order for them.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..errors import FloraError
from .machine import loadavg
from .report import number_text
from .result import artifact_entry, pick_baseline, ratios
from .transports import LocalTransport

log = logging.getLogger(__name__)

PROMPT_TEXT = ("The quick brown fox jumps over the lazy dog while the farmer counts his sheep "
               "at dawn; meanwhile, in a small village by the sea, children build sand castles, "
               "fishermen mend their nets and an old lighthouse keeper writes letters to friends "
               "far away about storms, ships and the changing colours of the evening sky. ")


@dataclass(frozen=True)
class BenchConfig:
    prompt_len: int = 64
    gen_len: int = 64
    runs: int = 5
    warmup: int = 1
    threads: int = 2
    cooldown_s: float = 0.0          # idle time between runs (phones: let the SoC cool)
    passes: int = 1                  # >1: fresh workers per pass, load order reversed each pass
    engine: str | None = None        # None: each artifact's default engine

    def __post_init__(self):
        if self.gen_len < 2 or self.prompt_len < 1:
            raise FloraError("TPOT needs --gen-len >= 2 and TTFT --prompt-len >= 1",
                             "raise --gen-len / --prompt-len")
        if self.runs < 1 or self.threads < 1 or self.passes < 1:
            raise FloraError("--runs, --threads and --passes must be >= 1", "pass positive values")


def prompt_for(specs: list[str], prompt_len: int) -> tuple[list[int], str]:
    """Fixed prompt ids and the text they come from: PROMPT_TEXT (repeated) cut at exactly
    `prompt_len` tokens of the first artifact's tokenizer. Without a tokenizer file
    (eager presets) the ids are the first `prompt_len` byte values of the text."""
    text = PROMPT_TEXT * (prompt_len // 8 + 1)
    tok_file = next((p for s in specs for p in sorted(Path(s).glob("tokenizer.json"))
                     if not s.startswith("eager:")), None)
    if tok_file is None:
        data = text.encode()[:prompt_len]
        return list(data), data.decode(errors="ignore")
    from tokenizers import Tokenizer

    enc = Tokenizer.from_file(str(tok_file)).encode(text, add_special_tokens=False)
    if len(enc.ids) < prompt_len:
        raise FloraError(f"--prompt-len {prompt_len} is longer than the built-in prompt text",
                         "use a shorter --prompt-len")
    return enc.ids[:prompt_len], text[:enc.offsets[prompt_len - 1][1]]


def run_bench(artifacts: dict[str, str], config: BenchConfig = BenchConfig(),
              transport=None, baseline: str | None = None,
              progress: Callable[[str], None] | None = None) -> dict:
    """Run every artifact `config.runs` times, interleaved, after `config.warmup` warm-up
    runs each; returns the result (samples, medians and spread, ratios to `baseline`,
    peak RSS of each artifact's own process, machine facts and load before/after)."""
    transport = transport or LocalTransport()
    say = progress or (lambda msg: log.info(msg))
    baseline = pick_baseline(list(artifacts), baseline)
    ids, text = prompt_for(list(artifacts.values()), config.prompt_len)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    device_before, host_load_before = transport.describe(), loadavg()
    samples, rss, infos = {name: [] for name in artifacts}, {}, {}
    staged = {name: transport.stage(name, spec) for name, spec in artifacts.items()}
    try:
        for p in range(config.passes):
            names = list(artifacts) if p % 2 == 0 else list(artifacts)[::-1]
            _one_pass(names, staged, config, transport, (ids, text), samples, rss, infos, say,
                      f"pass {p + 1}/{config.passes} " if config.passes > 1 else "")
    finally:
        transport.close()
    device_after, host_load_after = transport.describe(), loadavg()
    return _result(artifacts, config, baseline, ids, samples, infos, rss, started,
                   transport, (device_before, device_after), (host_load_before, host_load_after))




def _one_pass(names, staged, config, transport, prompt, samples, rss, infos, say, tag) -> None:
    """Load every artifact in `names` order in its own session, run warm-up + runs
    interleaved (A B C, C B A, ...), close the sessions (peak RSS: max over passes).
    Batch sessions (`run_batch`) run their whole batch each, in `names` order, first."""
    ids, text = prompt
    sessions = {}
    try:
        for name in names:
            say(f"{tag}loading {name} ({staged[name]})")
            sessions[name] = transport.open(staged[name], config.engine, config.threads)
            infos[name] = sessions[name].info
        batch = [n for n in names if hasattr(sessions[n], "run_batch")]
        for name in batch:
            say(f"{tag}{name}: {config.warmup} warm-up + {config.runs} runs in one launch")
            got = sessions[name].run_batch(ids, text, config.gen_len, config.warmup, config.runs,
                                           config.cooldown_s)
            samples[name].extend(got)
            infos[name] = {**sessions[name].info, "schedule": "batch"}
            for i, s in enumerate(got):
                say(f"{tag}run {i + 1}/{config.runs} {name}: TTFT {number_text(s['ttft_ms'], 1)} ms, "
                    f"TPOT {number_text(s['tpot_ms'], 2)} ms")
        names = [n for n in names if n not in batch]
        for r in range(config.warmup + config.runs if names else 0):
            # A B C, C B A, A B C ...: each artifact takes every position in turn, so a
            # penalty for running first (or last) in a round does not land on one artifact.
            for name in (names if r % 2 == 0 else names[::-1]):
                if config.cooldown_s:
                    time.sleep(config.cooldown_s)
                s = sessions[name].run(ids, text, config.gen_len)
                if r >= config.warmup:
                    samples[name].append(s)
                    say(f"{tag}run {r - config.warmup + 1}/{config.runs} {name}: TTFT "
                        f"{s['ttft_ms']:.1f} ms, TPOT {s['tpot_ms']:.2f} ms")
                else:
                    say(f"{tag}warm-up {r + 1}/{config.warmup} {name}")
    finally:
        for name, sess in sessions.items():
            try:
                peak = sess.close().get("peak_rss_mb")
            except FloraError as e:
                log.warning("closing %s: %s", name, e)
                continue
            old = rss.get(name, {}).get("peak_rss_mb")
            rss[name] = {"peak_rss_mb": max(filter(None, [old, peak]), default=None)}


def _result(artifacts, config, baseline, ids, samples, infos, rss, started, transport,
            device, host_load) -> dict:
    from .runners import read_manifest

    out = {"format_version": 1, "started_utc": started, "config": asdict(config),
           "baseline": baseline, "prompt_ids": ids, "transport": transport.name,
           "device_before": device[0], "device_after": device[1],
           "host_loadavg_before": host_load[0], "host_loadavg_after": host_load[1],
           "artifacts": {}}
    for name, spec in artifacts.items():
        manifest = None if spec.startswith("eager:") else read_manifest(Path(spec))
        out["artifacts"][name] = artifact_entry(spec, infos.get(name, {}), rss.get(name, {}),
                                                _export_summary(manifest), samples[name])
    out["ratios"] = ratios(out["artifacts"], baseline, config.runs, config.passes)
    return out






def _export_summary(manifest: dict | None) -> dict | None:
    if not manifest:
        return None
    adapter = manifest.get("adapter") or {}
    return {"target": manifest.get("target"), "backends": manifest.get("backends"),
            "quant": (manifest.get("quantization") or {}).get("name"),
            "adapter": adapter.get("adapter_type"), "adapter_state": adapter.get("state"),
            "model": (manifest.get("model") or {}).get("name"),
            "bytes": sum(f["bytes"] for f in (manifest.get("files") or {}).values())}
