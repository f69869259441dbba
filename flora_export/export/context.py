"""What every backend's build() receives: the configs, the reference run, the stage timer."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import FloraError
from ..quantize import QuantConfig
from ..verify import Parity, check, compare, eager_step, run_steps
from .output import Stages


@dataclass
class BuildContext:
    quant: QuantConfig
    config: "object"                 # ExportConfig
    tokens: torch.Tensor             # [1, prompt + steps]: the verification sequence
    prompt_len: int
    fp32_logits: list[torch.Tensor]  # the eager fp32 model's logits on `tokens`
    bos: int
    eos: list[int]
    stages: Stages
    backend: str = ""                # the backend being built (set by the pipeline)
    # backend -> the eager logits its runtime was checked against (verify_reference)
    references: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return self.config.verify.decode_steps

    def eager_logits(self, model) -> list[torch.Tensor]:
        """The eager model's logits on the verification sequence (fresh cache)."""
        return run_steps(eager_step(model), self.tokens, self.prompt_len, self.steps)

    def verify(self, step, eager: list[torch.Tensor], what: str) -> Parity:
        """Run `step` over the sequence, compare with `eager`, enforce the thresholds."""
        parity = compare(eager, run_steps(step, self.tokens, self.prompt_len, self.steps))
        self.references[self.backend] = eager[:parity.steps]
        if self.quant.quantizes:
            parity.quant_sqnr_db_vs_fp32 = compare(self.fp32_logits, eager).sqnr_db
        return check(parity, self.quant.quantizes, self.config.verify, what)


def check_quantized_count(found: int, expected: int, what: str) -> None:
    if found != expected:
        raise FloraError(
            f"the {what} has {found} quantized linear ops, expected {expected} (one per "
            "projection and the output head)",
            "some projections fell back to float; report this with the manifest inputs")
