"""The GRPO advantage modes: the one list (a name, its label, whether it reads λ), light to import (the config,
the CLI and the study read it without importing torch).

Each name is one function in `stepcode.training.advantages`, `<name>_step_advantages(step_rewards, lam, eps,
mask=None)`, giving the step term A_step [G, n] of a group, 0 where the [G, n] bool mask says a rollout lacks that
anchor (the terminal term A_final is the same in every mode). Adding a mode is that function plus its line here
(docs/adding-an-advantage-mode.md); the CLI, params validation, the trainer and the ablation study's arms all follow
this list.
"""

from typing import NamedTuple


class Mode(NamedTuple):
    label: str          # how reports name it
    uses_lam: bool      # whether its step term reads lambda (runs of the others log lambda = 0)


MODES = {   # baseline first: the study reports its arms in this order
    "terminal": Mode("Terminal-GRPO", uses_lam=False),     # vanilla GRPO: the final-answer z-score only
    "step": Mode("Step-GRPO (λ=0)", uses_lam=False),       # + the per-anchor group z-score
    "bilevel": Mode("Bi-Level GRPO", uses_lam=True),       # + λ times the intra-trajectory term (the paper)
}
DEFAULT_MODE = "bilevel"


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    return mode
