"""flora-eval and the shipped demo model: base vs adapter, eager vs the int4 .pte."""

from __future__ import annotations

import json

import pytest

from flora_export.cli import main as export_main
from flora_export.eval_cli import main as eval_main
from flora_export.train.evaluation import generate, score_eager, score_steps
from flora_export.train.tasks import eval_set

N = 100


def _eval(capsys, *args) -> dict:
    assert eval_main(["-n", str(N), "--task", "shift", "--show", "2", *args]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "loss" in out
    return out


@pytest.fixture(scope="module")
def default_pte(tmp_path_factory):
    out = tmp_path_factory.mktemp("pte") / "android"
    assert export_main(["--target", "android", "--out", str(out)]) == 0
    return out


def test_the_adapter_teaches_the_base_a_new_task(tmp_path, capsys):
    base_json, adapter_json = tmp_path / "base.json", tmp_path / "adapter.json"
    _eval(capsys, "--adapter", "none", "--json", str(base_json))
    printed = _eval(capsys, "--json", str(adapter_json))
    base, adapter = (json.loads(p.read_text()) for p in (base_json, adapter_json))
    assert base["n"] == adapter["n"] == N
    assert base["accuracy"] <= 0.05, "the base was never taught to shift letters"
    assert adapter["accuracy"] >= 0.9
    assert adapter["loss"] < base["loss"] / 5
    assert "ok " in printed and adapter["samples"][0]["got"] == adapter["samples"][0]["expected"]


def test_int4_pte_keeps_the_accuracy_through_the_executorch_runtime(default_pte, tmp_path,
                                                                   capsys):
    eager_json, pte_json = tmp_path / "eager.json", tmp_path / "pte.json"
    _eval(capsys, "--json", str(eager_json))
    _eval(capsys, "--export", str(default_pte), "--json", str(pte_json))
    eager, pte = (json.loads(p.read_text()) for p in (eager_json, pte_json))
    assert pte["runtime"] == "executorch" and pte["quantization"] == "8da4w"
    assert pte["accuracy"] >= eager["accuracy"] - 0.1 and pte["accuracy"] >= 0.85
    assert abs(pte["loss"] - eager["loss"]) < 0.5


def test_teacher_forced_verdict_equals_greedy_generation():
    """Exact match from one teacher-forced pass == decoding greedily and comparing."""
    from flora_export.adapters import load_adapter
    from flora_export.default import DEFAULT_ADAPTER, DEFAULT_BASE
    from flora_export.model import load_model
    from flora_export.train.data import Encoder
    from flora_export.verify import eager_step

    model = load_model(DEFAULT_BASE)
    load_adapter(model, DEFAULT_ADAPTER)
    enc = Encoder.for_model(model)
    examples = eval_set(["shift", "copy"], 30)
    model.setup_cache(64)
    step = eager_step(model)
    greedy = sum(enc.decode(generate(step, enc.encode(e).prompt, 10, enc.stop_ids)) == e.response
                 and generate(step, enc.encode(e).prompt, 10, enc.stop_ids)[-1] in enc.stop_ids
                 for e in examples)
    assert score_eager(model, enc, examples).correct == greedy
    assert score_steps(step, enc, examples).correct == greedy


@pytest.mark.parametrize("args, message", [
    (["--task", "divide"], "unknown task 'divide'"),
    ([], "no evaluation data given"),
    (["--task", "reverse", "-n", "0"], "argument -n: must be an integer >= 1"),
    (["--task", "reverse", "--export", "/nonexistent"], "has no manifest.json"),
])
def test_bad_input_is_one_line(args, message, capsys):
    try:
        code = eval_main(args)
    except SystemExit as e:       # argparse refuses an option's value before any work
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


CHAT = r"""
import json, sys
import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
import executorch.kernels.quantized  # noqa: F401
from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner
out = sys.argv[1]
template = json.load(open(out + "/manifest.json"))["runtime"]["chat"]["template"]
runner = TextLLMRunner(out + "/model.pte", out + "/tokenizer.json")
for word in sys.argv[2:]:
    runner.reset()
    runner.generate(template.format(prompt="shift: " + word),
                    GenerationConfig(max_new_tokens=8, temperature=0.0, seq_len=64, echo=False))
    print("\n<END>", flush=True)
"""


def test_the_demo_chats_in_executorchs_llm_runner(default_pte):
    """What the apps do: the manifest's chat template, ExecuTorch's TextLLMRunner, the
    int4 .pte; the adapter's task answered and stopped at <|eot_id|>."""
    import subprocess
    import sys

    words = ["hello", "phone", "fused"]
    proc = subprocess.run([sys.executable, "-c", CHAT, str(default_pte), *words],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    replies = [r.split("PyTorchObserver")[0].strip() for r in proc.stdout.split("<END>")[:3]]
    assert replies == ["ifmmp<|eot_id|>", "qipof<|eot_id|>", "gvtfe<|eot_id|>"]
