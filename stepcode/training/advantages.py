"""Bi-Level GRPO advantage math (StepCodeReasoner), as pure functions on float tensors.

One prompt group of G rollouts, each judged on its anchors (r[g, i] in {0, 1}) and on its final answer (r_final[g]).
Rollout g has the anchor positions where mask[g, i] is True (its own n_g = mask[g].sum(); no mask: all G have all n):

    A_group[g, i] = (r[g, i] - mean_h r[h, i]) / (std_h r[h, i] + eps)     population std over the rollouts h that
                                                                           have position i; 0 if they all agree
    A_intra[g, i] = r[g, i] * (1 + mean_{j>i} r[g, j])                     j over g's own positions only; the
                                                                           future term is 0 at g's last anchor
    A_step        = A_group + lam * A_intra                                lam = 0.3; exactly 0 where mask is False
    A_final[g]    = (r_final[g] - mean r_final) / (std r_final + eps)      on every completion token
    token t of anchor i's span gets A_final[g] + A_step[g, i]; every other completion token gets A_final[g].

Tensors are laid out [G, n] (rollout first), i.e. the transpose of the paper's r[i, g]; n is the group's widest
trace. Which positions a rollout has depends on the task: in the output task every rollout is judged on the gold
trace, so its mask is full and a missing print is a 0 reward at its position (it counts as wrong in the group
statistics); in the input task each rollout is judged on the trace of its own committed input, so a rollout with a
shorter trace simply has fewer positions, and zero padding never enters its intra term or another's z-scores.
Example: r = [1, 1] in a group of width 4 has A_intra = [1 * (1 + 1), 1] = [2, 1]; read as the padded [1, 1, 0, 0]
it would be [1 * (1 + 1/3), 1, 0, 0].

Usage:

    from stepcode.training.advantages import bilevel_group_advantages, char_spans_to_token_spans, token_advantages

    mask = torch.arange(n)[None, :] < n_anchors[:, None]                                # [G, n] positions present
    final_adv, step_adv = bilevel_group_advantages(step_rewards, final_rewards, mask=mask)   # one prompt group
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


def _check_mask(mask: torch.Tensor | None, step_rewards: torch.Tensor) -> torch.Tensor:
    """`mask` as a bool [G, n] tensor (None: every position present); refuses a mask of another shape or dtype."""
    if mask is None:
        return torch.ones_like(step_rewards, dtype=torch.bool)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        # 0/1 floats would be easy to confuse with rewards, so the positions must be said as booleans.
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    if mask.shape != step_rewards.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, step_rewards {tuple(step_rewards.shape)}")
    return mask


def _zscore(x: torch.Tensor, eps: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(x - mean) / (population std + eps) along dim 0 over the entries where `mask` is True (None: all of them).

    Exactly 0 where all present values are equal (incl. one or none present) and wherever mask is False.
    """
    if mask is None or bool(mask.all()):
        z = (x - x.mean(dim=0)) / (x.std(dim=0, unbiased=False) + eps)
        # Rounding in the mean of equal non-binary rewards (e.g. seven 0.7s in float32) leaves a ~1e-8 residue that
        # eps turns into a spurious ~0.06 advantage, so a group with nothing to compare is zeroed explicitly.
        all_equal = (x == x[:1]).all(dim=0)
        return torch.where(all_equal, torch.zeros_like(z), z)
    present = mask.to(x.dtype)
    count = present.sum(dim=0).clamp(min=1)               # clamp: a column nobody has gives 0 / 1, then is zeroed
    x = torch.where(mask, x, torch.zeros_like(x))
    mean = x.sum(dim=0) / count
    std = (((x - mean) ** 2) * present).sum(dim=0).div(count).sqrt()
    z = (x - mean) / (std + eps)
    inf = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)
    all_equal = torch.where(mask, x, -inf).amax(dim=0) <= torch.where(mask, x, inf).amin(dim=0)
    return torch.where(mask & ~all_equal, z, torch.zeros_like(z))


@torch.no_grad()
def group_step_advantages(step_rewards: torch.Tensor, eps: float = 1e-6,
                          mask: torch.Tensor | None = None) -> torch.Tensor:
    """Inter-trajectory term: z-score of each anchor's reward across the rollouts that have that anchor. [G, n] ->
    [G, n]; mask [G, n] bool (None: all present); 0 where mask is False."""
    _check_float("step_rewards", step_rewards, 2)
    return _zscore(step_rewards, eps, None if mask is None else _check_mask(mask, step_rewards))


@torch.no_grad()
def intra_step_advantages(step_rewards: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Intra-trajectory term r[g, i] * (1 + mean of r[g, j] for j > i among g's own positions). [G, n] -> [G, n].

    A correct step is worth more when the steps after it are also correct (the paper's Figure 1); a wrong step gets 0.
    mask [G, n] bool (None: all present): positions a rollout lacks are neither averaged in nor given a term (0).
    """
    _check_float("step_rewards", step_rewards, 2)
    mask = _check_mask(mask, step_rewards)
    present = mask.to(step_rewards.dtype)
    r = torch.where(mask, step_rewards, torch.zeros_like(step_rewards))

    def future(x: torch.Tensor) -> torch.Tensor:
        # Suffix sum shifted left by one: future(x)[:, i] = sum_{j > i} x[:, j]; an exact 0 past the last column.
        return torch.nn.functional.pad(x.flip(-1).cumsum(-1).flip(-1)[:, 1:], (0, 1))

    future_mean = future(r) / future(present).clamp(min=1)   # clamp only guards a last anchor, whose sum is 0
    return torch.where(mask, r * (1 + future_mean), torch.zeros_like(r))


@torch.no_grad()
def step_advantages(step_rewards: torch.Tensor, lam: float = 0.3, eps: float = 1e-6,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """A_step = A_group + lam * A_intra. [G, n] -> [G, n]; mask as in the two terms."""
    return group_step_advantages(step_rewards, eps, mask) + lam * intra_step_advantages(step_rewards, mask)


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
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(final_adv [G], step_adv [G, n]) for one prompt group.

    mode: "bilevel" (A_group + lam * A_intra), "step" (lam = 0: the paper's Step-GRPO ablation), or "terminal"
    (vanilla GRPO: step_adv all zeros). mask [G, n] bool: the anchor positions each rollout has (None: all; see the
    module doc); step_adv is exactly 0 where it is False. A rollout with at most one anchor gets step_adv 0: its
    only anchor is the return value, which the final reward already judges (the paper trains such samples with the
    terminal reward only); its reward still counts in the group statistics of position 0.
    """
    step_mode = STEP_ADVANTAGES[check_mode(mode)]
    _check_float("step_rewards", step_rewards, 2)
    _check_float("final_rewards", final_rewards, 1)
    if step_rewards.shape[0] != final_rewards.shape[0]:
        raise ValueError(
            f"group sizes differ: step_rewards has {step_rewards.shape[0]} rollouts, "
            f"final_rewards has {final_rewards.shape[0]}"
        )
    full = _check_mask(mask, step_rewards)
    final_adv = final_advantages(final_rewards, eps)
    if step_rewards.shape[1] <= 1:
        return final_adv, torch.zeros_like(step_rewards)
    step_adv = step_mode(step_rewards, lam, eps, mask)
    keep = full & (full.sum(dim=1, keepdim=True) > 1)
    return final_adv, torch.where(keep, step_adv, torch.zeros_like(step_adv))


# --- the advantage modes: one function each, named in stepcode.training.modes.MODES ------------------------------
# Signature: (step_rewards [G, n], lam, eps, mask [G, n] bool or None = all present) -> [G, n], 0 where mask is False.

@torch.no_grad()
def terminal_step_advantages(step_rewards: torch.Tensor, lam: float, eps: float,
                             mask: torch.Tensor | None = None) -> torch.Tensor:
    """Vanilla GRPO: no step term."""
    return torch.zeros_like(step_rewards)


@torch.no_grad()
def step_step_advantages(step_rewards: torch.Tensor, lam: float, eps: float,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """Step-GRPO (the paper's ablation): the per-anchor group z-score alone (lambda = 0)."""
    return step_advantages(step_rewards, lam=0.0, eps=eps, mask=mask)


@torch.no_grad()
def bilevel_step_advantages(step_rewards: torch.Tensor, lam: float, eps: float,
                            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Bi-Level GRPO: the group z-score plus lam times the intra-trajectory term."""
    return step_advantages(step_rewards, lam=lam, eps=eps, mask=mask)


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
