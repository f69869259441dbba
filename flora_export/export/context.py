"""What every backend's build() receives: the configs, the reference run, the stage timer,
and the two gates (lowering and quality, see flora_export/verify.py) it applies."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import FloraError
from ..quantize import QuantConfig, rowwise_eager
from ..verify import (VerifyConfig, compare, eager_extension, eager_step, enforce, judge_lowering,
                      judge_quality, lowering_thresholds, measure, reference_sequence,
                      rounding_sensitivity_db, run_steps, sensitive_config)
from .backend import Gates
from .output import Stages
from ..prompt import extension_tokens

log = logging.getLogger(__name__)


@dataclass
class BuildContext:
    quant: QuantConfig
    config: "object"                 # ExportConfig
    tokens: torch.Tensor             # [1, L]: the verification sequence (all rounds)
    prompt_len: int
    fp32_logits: list[torch.Tensor]  # the eager fp32 model's logits on `tokens`
    bos: int
    eos: list[int]
    stages: Stages
    backend: str = ""                # the backend being built (set by the pipeline)
    # backend -> the eager logits its runtime was checked against (verify_reference)
    references: dict = field(default_factory=dict)
    random_weights: bool = False     # a preset: quality cannot be judged
    heldout: dict | None = None      # {"tasks", "encoder", "examples", "fp32": EvalResult dict}
    # backend -> the eager model's rounding sensitivity (verify.rounding_sensitivity_db)
    sensitivity: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        """Decode steps over the whole sequence (every round)."""
        return self.tokens.shape[1] - self.prompt_len

    @property
    def bound(self) -> str:
        cfg = self.config
        return (f"max_seq {cfg.max_seq}" if cfg.max_seq - self.prompt_len <=
                cfg.verify.max_positions else f"max_positions {cfg.verify.max_positions}")

    def eager_logits(self, model) -> list[torch.Tensor]:
        """The eager model's logits on the verification sequence (fresh cache): the first
        round step by step, the extension (quantized exports) in one cached chunk."""
        first = self.config.verify.decode_steps
        with rowwise_eager(model):
            out = run_steps(eager_step(model), self.tokens, self.prompt_len, first)
            if self.quant.quantizes:
                out += eager_extension(model, self.tokens, self.prompt_len + first)
        return out

    def measure_sensitivity(self, model, eager: list[torch.Tensor]) -> float | None:
        """The rounding sensitivity of the quantized eager model whose logits are `eager`
        (an extra eager pass); the lowering gate of this backend then allows what it
        implies (verify.sensitive_config)."""
        s = rounding_sensitivity_db(model, lambda: self.eager_logits(model), eager)
        self.sensitivity[self.backend] = s
        if s is not None:
            log.info("rounding sensitivity %.2f dB: lowering SQNR threshold %.2f dB", s,
                     sensitive_config(self.config.verify, s).min_sqnr_db)
        return s

    def program_logits(self, step, positions: int) -> list[torch.Tensor]:
        """A checked torch program's logits at the `positions` the eager reference scored:
        on the eager schedule (the first round step by step, the extension in one chunk)
        when the step can score a chunk (`step.extend`), else step by step."""
        first = self.config.verify.decode_steps
        if hasattr(step, "extend") and positions > first + 1:
            got = run_steps(step, self.tokens, self.prompt_len, first)
            got += step.extend(self.tokens, self.prompt_len + first)
            if len(got) == positions:
                return got
            raise FloraError(f"the checked program scored {len(got)} positions, the reference "
                             f"{positions}", "report this with the manifest inputs")
        return run_steps(step, self.tokens, self.prompt_len, positions - 1)

    def verify(self, step, eager: list[torch.Tensor], what: str, *,
               program_only: bool = False) -> Gates:
        """Both gates for `step` (the artifact in its runtime) against `eager` (the eager
        model with the artifact's weights) and the fp32 logits; raises FloraError when one
        fails.

        program_only: `step` is the torch program a backend converts, not the artifact
        (which this machine cannot run, e.g. Core ML off macOS): it is held to the fp32
        tolerance against `eager` over the whole sequence, without a quality gate and
        without a verify_reference entry; `defer()` then records the artifact's gates."""
        q = self.quant.quantizes
        sensitivity = self.sensitivity.get(self.backend)
        cfg = sensitive_config(self.config.verify, sensitivity)
        if program_only:
            got = self.program_logits(step, len(eager))
            low = compare(eager, got, cfg.decisive_k, cfg.min_sqnr_db)
            enforce(judge_lowering(low, False, cfg, "the reference sequence"), what)
            return Gates(parity=low.to_dict(), quality=None)
        low, qual, _ = measure(step, self.tokens, self.prompt_len, eager, self.fp32_logits, cfg,
                               q, quality_needed=q and not self.random_weights)
        self.references[self.backend] = eager[:low.steps]
        if q:
            low.quant_sqnr_db_vs_fp32 = qual.sqnr_db
        judge_lowering(low, q, cfg, self.bound)
        if q and sensitivity is not None:
            low.thresholds.update(rounding_sensitivity_db=round(sensitivity, 3),
                                  fixed_min_sqnr_db=self.config.verify.min_sqnr_db)
        enforce(low, what)
        if q:
            heldout = self.heldout_result(step) if self.heldout else None
            enforce(judge_quality(qual, cfg, self.bound, self.random_weights, heldout), what,
                    "drop --onnx-shared-embedding (its int4 embedding costs accuracy)"
                    if self.config.shared_embedding and self.backend == "onnx" else None)
        else:                       # an fp32 export's reference is the fp32 model itself
            qual = copy.copy(low)
            qual.gate = "quality"
        return Gates(parity=low.to_dict(), quality=qual.to_dict())

    def defer(self, program: Gates, estimate: list[torch.Tensor], what: str, *, needs: str,
              command: str, how: str, reference: str) -> Gates:
        """The gates of an artifact that runs only on its device: `program` (verify() of the
        torch program that was converted) and the quality gate estimated here, with the
        eager model carrying the artifact's weights (`estimate`, its logits) against fp32;
        raises FloraError when that fails. The parity record says how to run the artifact's
        own gates where the artifact runs (`needs`: `command`, used as `how` says, with the
        saved `reference` file), under the lossy thresholds (a device computing in fp16 is
        never exact)."""
        cfg, q = self.config.verify, self.quant.quantizes
        quality = judge_quality(compare(self.fp32_logits, estimate, cfg.decisive_k,
                                        cfg.min_quality_sqnr_db),
                                cfg, self.bound, self.random_weights, None)
        enforce(quality, what)
        parity = {"status": f"not run (needs {needs})", "how": how, "reference": reference,
                  "thresholds": lowering_thresholds(cfg, True),
                  "torch_program_vs_eager": program.parity,
                  "quant_sqnr_db_vs_fp32": (round(compare(self.fp32_logits, estimate).sqnr_db, 3)
                                            if q else None),
                  "passed": None}
        return Gates(parity=parity, quality={
            **quality.to_dict(), "status": "estimate: the eager model with the package's "
            f"weights; the package itself is checked on {needs} by {command}"})

    def heldout_result(self, step) -> dict:
        from ..train.evaluation import score_steps
        h = self.heldout
        art = score_steps(step, h["encoder"], h["examples"]).to_dict()
        return {"tasks": h["tasks"], "n": len(h["examples"]), "fp32": h["fp32"],
                "artifact": {k: art[k] for k in ("n", "correct", "accuracy", "loss")}}


def reference(model, prompt: list[int], config) -> dict:
    """The verification sequence and the fp32 model's logits on it, before quantization:
    the prompt, the greedy continuation (first round), then teacher-forced extension
    tokens up to max_seq (or max_positions); plus the held-out evaluation when known."""
    vcfg: VerifyConfig = config.verify
    tokens, logits = reference_sequence(model, prompt, vcfg.decode_steps)
    # max_seq - 1: the last position must leave the query a slot (Core ML's captured program
    # guards T < max_seq; every backend runs the same sequence)
    length = min(config.max_seq - 1, len(prompt) - 1 + vcfg.max_positions)
    if length > tokens.shape[1]:
        extra = torch.tensor([extension_tokens(model, length - tokens.shape[1])])
        fed = tokens.shape[1]
        tokens = torch.cat([tokens, extra], dim=1)
        logits += eager_extension(model, tokens, fed)
    random_weights = model.source is not None and model.source.random_weights
    heldout = None if random_weights else heldout_reference(model, config)
    return {"tokens": tokens, "prompt_len": len(prompt), "fp32_logits": logits,
            "random_weights": random_weights, "heldout": heldout}


def heldout_tasks(model) -> list[str] | None:
    """The built-in tasks the model (its adapter when it has one) was trained on, from the
    recipe.yaml flora-train writes next to the weights; None when unknown."""
    import yaml

    from ..train.tasks import TASKS
    src = model.adapter_state.source if model.adapter_state is not None else model.source
    if src is None or not src.path:
        return None
    path = Path(src.path) / "recipe.yaml"
    if not path.is_file():
        return None
    try:
        tasks = ((yaml.safe_load(path.read_text()) or {}).get("data") or {}).get("tasks") or []
    except yaml.YAMLError:
        return None
    tasks = [t for t in tasks if t in TASKS]
    return tasks or None


def heldout_reference(model, config) -> dict | None:
    """fp32 held-out exact-match accuracy on the model's own tasks (None when unknown or
    when the examples do not fit max_seq)."""
    from ..train.evaluation import score_eager
    from ..train.data import Encoder
    from ..train.tasks import eval_set

    tasks = heldout_tasks(model)
    if not tasks or config.verify.heldout_examples <= 0:
        return None
    examples = eval_set(tasks, config.verify.heldout_examples)
    encoder = Encoder.for_model(model)
    longest = max(len(e.prompt) + len(e.target) for e in map(encoder.encode, examples))
    if longest > config.max_seq:
        log.info("held-out examples need %d positions > max_seq %d: skipped", longest,
                 config.max_seq)
        return None
    res = score_eager(model, encoder, examples).to_dict()
    return {"tasks": tasks, "encoder": encoder, "examples": examples,
            "fp32": {k: res[k] for k in ("n", "correct", "accuracy", "loss")}}
