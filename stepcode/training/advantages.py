"""Bi-Level GRPO advantage math (StepCodeReasoner), as pure functions on float tensors.

One prompt group of G rollouts, each judged on n gold anchors (r[g, i] in {0, 1}) and on its final answer (r_final[g]):

    A_group[g, i] = (r[g, i] - mean_g r[., i]) / (std_g r[., i] + eps)       population std, per anchor
    A_intra[g, i] = r[g, i] * (1 + mean_{j>i} r[g, j])                          future term 0 at the last anchor
    A_step        = A_group + lam * A_intra                                     lam = 0.3
    A_final[g]    = (r_final[g] - mean r_final) / (std r_final + eps)          on every completion token
    token t of anchor i's span gets A_final[g] + A_step[g, i]; every other completion token gets A_final[g].

Tensors are laid out [G, n] (rollout first), i.e. the transpose of the paper's r[i, g].

Usage:

    from stepcode.training.advantages import bilevel_group_advantages, char_spans_to_token_spans, token_advantages

    final_adv, step_adv = bilevel_group_advantages(step_rewards, final_rewards)       # one prompt group
    spans = [char_spans_to_token_spans(cs, offs) for cs, offs in zip(char_spans, offsets)]
    adv = token_advantages(final_adv, step_adv, n_anchors, spans, completion_mask)  # [B, T]

Advantages are constants in the policy-gradient loss, so every tensor function here runs under `torch.no_grad()`
and returns tensors that do not require grad, whatever the inputs did.
"""

from collections.abc import Sequence

import torch

from stepcode.training.modes import MODES, check_mode


def _check_float(name: str, x: torch.Tensor, ndim: int) -> None:
    # Integer rewards would make the z-scores silently truncate, so they are refused rather than cast.
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty along dim 0 (no rollouts)")


def _zscore(x: torch.Tensor, eps: float) -> torch.Tensor:
    """(x - mean) / (population std + eps) along dim 0; exactly 0 where all G values are equal (incl. G = 1)."""
    z = (x - x.mean(dim=0)) / (x.std(dim=0, unbiased=False) + eps)
    # Rounding in the mean of equal non-binary rewards (e.g. seven 0.7s in float32) leaves a ~1e-8 residue that eps
    # turns into a spurious ~0.06 advantage, so a group with nothing to compare is zeroed explicitly.
    all_equal = (x == x[:1]).all(dim=0)
    return torch.where(all_equal, torch.zeros_like(z), z)


@torch.no_grad()
def group_step_advantages(step_rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Inter-trajectory term: z-score of each anchor's reward across the group. [G, n] -> [G, n]."""
    _check_float("step_rewards", step_rewards, 2)
    return _zscore(step_rewards, eps)


@torch.no_grad()
def intra_step_advantages(step_rewards: torch.Tensor) -> torch.Tensor:
    """Intra-trajectory term r[g, i] * (1 + mean of r[g, j] for j > i). [G, n] -> [G, n].

    A correct step is worth more when the steps after it are also correct (the paper's Figure 1); a wrong step gets 0.
    """
    _check_float("step_rewards", step_rewards, 2)
    n = step_rewards.shape[1]
    suffix_sum = step_rewards.flip(-1).cumsum(-1).flip(-1)  # suffix_sum[:, i] = sum_{j >= i} r[:, j]
    # Shift left by one so future_sum[:, i] = sum_{j > i}; padding with an exact 0 keeps the last anchor's term 0.
    future_sum = torch.nn.functional.pad(suffix_sum[:, 1:], (0, 1))
    future_count = torch.arange(n - 1, -1, -1, dtype=step_rewards.dtype, device=step_rewards.device)
    future_mean = future_sum / future_count.clamp(min=1)  # clamp only guards the last anchor, whose sum is 0
    return step_rewards * (1 + future_mean)


@torch.no_grad()
def step_advantages(step_rewards: torch.Tensor, lam: float = 0.3, eps: float = 1e-6) -> torch.Tensor:
    """A_step = A_group + lam * A_intra. [G, n] -> [G, n]."""
    return group_step_advantages(step_rewards, eps) + lam * intra_step_advantages(step_rewards)


@torch.no_grad()
def final_advantages(final_rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Terminal term: z-score of the final-answer reward across the group (vanilla GRPO). [G] -> [G]."""
    _check_float("final_rewards", final_rewards, 1)
    return _zscore(final_rewards, eps)


@torch.no_grad()
def bilevel_group_advantages(
    step_rewards: torch.Tensor,
    final_rewards: torch.Tensor,
    mode: str = "bilevel",
    lam: float = 0.3,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(final_adv [G], step_adv [G, n]) for one prompt group.

    mode: "bilevel" (A_group + lam * A_intra), "step" (lam = 0: the paper's Step-GRPO ablation), or "terminal"
    (vanilla GRPO: step_adv all zeros). With n == 1 the only anchor is the return value, which the final reward
    already judges, so step_adv is zeros (the paper trains such samples with the terminal reward only).
    """
    step_mode = STEP_ADVANTAGES[check_mode(mode)]
    _check_float("step_rewards", step_rewards, 2)
    _check_float("final_rewards", final_rewards, 1)
    if step_rewards.shape[0] != final_rewards.shape[0]:
        raise ValueError(
            f"group sizes differ: step_rewards has {step_rewards.shape[0]} rollouts, "
            f"final_rewards has {final_rewards.shape[0]}"
        )
    final_adv = final_advantages(final_rewards, eps)
    if step_rewards.shape[1] <= 1:
        return final_adv, torch.zeros_like(step_rewards)
    return final_adv, step_mode(step_rewards, lam, eps)


# --- the advantage modes: one function each, named in stepcode.training.modes.MODES ------------------------------

@torch.no_grad()
def terminal_step_advantages(step_rewards: torch.Tensor, lam: float, eps: float) -> torch.Tensor:
    """Vanilla GRPO: no step term."""
    return torch.zeros_like(step_rewards)


@torch.no_grad()
def step_step_advantages(step_rewards: torch.Tensor, lam: float, eps: float) -> torch.Tensor:
    """Step-GRPO (the paper's ablation): the per-anchor group z-score alone (lambda = 0)."""
    return step_advantages(step_rewards, lam=0.0, eps=eps)


@torch.no_grad()
def bilevel_step_advantages(step_rewards: torch.Tensor, lam: float, eps: float) -> torch.Tensor:
    """Bi-Level GRPO: the group z-score plus lam times the intra-trajectory term."""
    return step_advantages(step_rewards, lam=lam, eps=eps)


STEP_ADVANTAGES = {mode: globals()[f"{mode}_step_advantages"] for mode in MODES}


@torch.no_grad()
def token_advantages(
    final_adv: torch.Tensor,
    step_adv: torch.Tensor,
    n_anchors: Sequence[int],
    spans: Sequence[Sequence[tuple[int, int]]],
    mask: torch.Tensor,
) -> torch.Tensor:
    """Per-token advantages [B, T]: final_adv[b] on every unmasked token, plus step_adv[b, i] inside span i.

    spans[b][i] = (start, end), end exclusive, token indices relative to the completion, of the i-th anchor span
    the completion produced. Spans for i >= n_anchors[b] (extras) are ignored; anchors with no span (missing) add
    nothing; spans are clipped to [0, T). Rows with n_anchors[b] <= 1 get the terminal term only.
    Overlapping spans: the later span wins, so a token carries at most one step term (it is never double-credited).
    Masked tokens (mask == 0) get exactly 0.
    """
    _check_float("final_adv", final_adv, 1)
    _check_float("step_adv", step_adv, 2)
    if mask.ndim != 2:
        raise ValueError(f"mask must have 2 dims [B, T], got shape {tuple(mask.shape)}")
    B, T = mask.shape
    if final_adv.shape[0] != B or step_adv.shape[0] != B or len(n_anchors) != B or len(spans) != B:
        raise ValueError(
            f"batch sizes differ: mask {B}, final_adv {final_adv.shape[0]}, step_adv {step_adv.shape[0]}, "
            f"n_anchors {len(n_anchors)}, spans {len(spans)}"
        )

    step_term = torch.zeros(B, T, dtype=final_adv.dtype, device=final_adv.device)
    for b, (n, row_spans) in enumerate(zip(n_anchors, spans)):
        if not 0 <= n <= step_adv.shape[1]:
            raise ValueError(f"n_anchors[{b}] = {n} is outside [0, {step_adv.shape[1]}] (step_adv width)")
        if n <= 1:
            continue
        for i, (start, end) in enumerate(row_spans[:n]):
            if end < start:
                raise ValueError(f"spans[{b}][{i}] = ({start}, {end}) ends before it starts")
            # Slice assignment clips to [0, T) and makes the later of two overlapping spans win.
            step_term[b, max(start, 0) : max(end, 0)] = step_adv[b, i]

    per_token = final_adv[:, None] + step_term
    return torch.where(mask.bool(), per_token, torch.zeros_like(per_token))


def char_spans_to_token_spans(
    char_spans: Sequence[tuple[int, int]], offsets: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Map character spans of the completion text to token spans (end exclusive) via a fast tokenizer's offsets.

    A token belongs to a span if its char range [tok_start, tok_end) overlaps [s, e). Zero-width tokens (special
    tokens report (0, 0)) overlap nothing. The output stays aligned with the input, one token span per char span,
    because position i means anchor i; a span that no token overlaps (empty, or past a truncated completion) maps
    to the empty span (0, 0).
    """
    token_spans = []
    for s, e in char_spans:
        if s < 0 or e < s:
            raise ValueError(f"bad character span ({s}, {e}): need 0 <= start <= end")
        hits = [t for t, (tok_s, tok_e) in enumerate(offsets) if tok_s < e and tok_e > s]
        token_spans.append((hits[0], hits[-1] + 1) if hits else (0, 0))
    return token_spans
