"""Bi-Level GRPO advantage math against hand-computed numbers (arithmetic in the comments).

Layout: rewards are [G, n] = [rollout, anchor].
"""

import math

import pytest
import torch

from stepcode.training.advantages import (
    bilevel_group_advantages,
    char_spans_to_token_spans,
    final_advantages,
    group_step_advantages,
    intra_step_advantages,
    step_advantages,
    token_advantages,
)

S2 = math.sqrt(2)


def close(actual, expected, atol=1e-5):
    # eps = 1e-6 in the denominators shifts z-scores by ~1e-6, well inside atol.
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# Three rollouts (rows) x three anchors (columns).
R3 = torch.tensor(
    [
        [1.0, 0.0, 1.0],
        [0.0, 0.0, 1.0],
        [1.0, 1.0, 1.0],
    ]
)


def test_group_term_3x3():
    # anchor 0: [1, 0, 1], mean 2/3, population var = (1/9 + 4/9 + 1/9) / 3 = 2/9, std = sqrt(2)/3
    #   z = (1/3) / (sqrt(2)/3) = 1/sqrt(2);  (-2/3) / (sqrt(2)/3) = -sqrt(2)
    # anchor 1: [0, 0, 1], mean 1/3, std sqrt(2)/3 -> -1/sqrt(2), -1/sqrt(2), sqrt(2)
    # anchor 2: all 1 -> zero variance -> 0
    close(
        group_step_advantages(R3),
        [
            [1 / S2, -1 / S2, 0.0],
            [-S2, -1 / S2, 0.0],
            [1 / S2, S2, 0.0],
        ],
    )


def test_intra_term_3x3():
    # row 0 [1, 0, 1]: 1*(1 + mean(0, 1)) = 1.5;  0*(...) = 0;  last: 1*(1 + 0) = 1
    # row 1 [0, 0, 1]: 0, 0, 1
    # row 2 [1, 1, 1]: 1*(1 + 1) = 2;  1*(1 + 1) = 2;  1
    close(intra_step_advantages(R3), [[1.5, 0.0, 1.0], [0.0, 0.0, 1.0], [2.0, 2.0, 1.0]])


def test_step_advantages_3x3_combine_with_lambda():
    # group + 0.3 * intra, element by element from the two tests above
    close(
        step_advantages(R3),
        [
            [1 / S2 + 0.45, -1 / S2, 0.3],
            [-S2, -1 / S2, 0.3],
            [1 / S2 + 0.6, S2 + 0.6, 0.3],
        ],
    )
    close(step_advantages(R3, lam=1.0), group_step_advantages(R3) + intra_step_advantages(R3))


def test_intra_matches_the_formula_written_as_loops():
    r = (torch.rand(4, 7, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    expected = torch.zeros_like(r)
    for g in range(4):
        for i in range(7):
            future = r[g, i + 1 :]
            expected[g, i] = r[g, i] * (1 + (future.mean() if len(future) else 0.0))
    close(intra_step_advantages(r), expected)


def test_figure1_later_correct_steps_raise_a_correct_steps_intra_advantage():
    # Both rollouts get anchor 0 right; rollout A keeps being right, rollout B goes wrong for two steps.
    # A: 1*(1 + mean(1, 1, 1)) = 2;  B: 1*(1 + mean(0, 0, 1)) = 4/3.  A wrong step gets 0 whatever follows.
    r = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]])
    intra = intra_step_advantages(r)
    close(intra[:, 0], [2.0, 4 / 3, 0.0])
    assert intra[0, 0] > intra[1, 0]


def test_zero_variance_groups_give_exact_zeros_and_no_nan():
    for value in (0.0, 1.0, 0.7):  # 0.7 x 7 does not average back to 0.7 exactly in float32
        r = torch.full((7, 3), value)
        assert torch.equal(group_step_advantages(r), torch.zeros(7, 3))
        assert torch.equal(final_advantages(r[:, 0]), torch.zeros(7))


def test_final_advantages():
    # [1, 0, 0, 1]: mean 0.5, population std 0.5 -> [1, -1, -1, 1]
    close(final_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0])), [1.0, -1.0, -1.0, 1.0])
    # [1, 0, 1]: mean 2/3, std sqrt(2)/3 -> [1/sqrt(2), -sqrt(2), 1/sqrt(2)]
    close(final_advantages(torch.tensor([1.0, 0.0, 1.0])), [1 / S2, -S2, 1 / S2])


def test_single_rollout_group():
    # G = 1: nothing to compare against, so both z-scores are 0; the intra term still applies:
    # [1, 0, 1] -> intra [1.5, 0, 1] -> step = 0.3 * intra = [0.45, 0, 0.3]
    final_adv, step_adv = bilevel_group_advantages(torch.tensor([[1.0, 0.0, 1.0]]), torch.tensor([1.0]))
    assert torch.equal(final_adv, torch.zeros(1))
    close(step_adv, [[0.45, 0.0, 0.3]])


def test_modes():
    final = torch.tensor([1.0, 0.0, 1.0])
    expected_final = [1 / S2, -S2, 1 / S2]

    final_adv, step_adv = bilevel_group_advantages(R3, final, mode="bilevel")
    close(final_adv, expected_final)
    close(step_adv, step_advantages(R3, lam=0.3))

    final_adv, step_adv = bilevel_group_advantages(R3, final, mode="step")  # lam = 0: group term only
    close(final_adv, expected_final)
    close(step_adv, group_step_advantages(R3))

    final_adv, step_adv = bilevel_group_advantages(R3, final, mode="terminal")
    close(final_adv, expected_final)
    assert torch.equal(step_adv, torch.zeros(3, 3))

    with pytest.raises(ValueError, match="unknown mode"):
        bilevel_group_advantages(R3, final, mode="grpo")


def test_single_anchor_gets_terminal_only():
    # n = 1: the only anchor is the return value, already judged by the final reward.
    final_adv, step_adv = bilevel_group_advantages(torch.tensor([[1.0], [0.0]]), torch.tensor([1.0, 0.0]))
    close(final_adv, [1.0, -1.0])
    assert torch.equal(step_adv, torch.zeros(2, 1))


def test_token_advantages_padding_missing_extra_single_anchor_and_past_T():
    final_adv = torch.tensor([1.0, -1.0, 0.5])
    # Row widths padded to N = 3 with 99.0, which must never reach a token.
    step_adv = torch.tensor([[0.2, 0.3, 0.4], [0.7, 0.9, 99.0], [5.0, 99.0, 99.0]])
    n_anchors = [3, 2, 1]
    spans = [
        [(0, 2), (2, 4), (4, 9), (0, 6)],  # third span runs past T = 6; the 4th is an extra (ignored)
        [(1, 3)],  # anchor 1 missing: no step term for it
        [(0, 3)],  # n = 1: terminal only
    ]
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    adv = token_advantages(final_adv, step_adv, n_anchors, spans, mask)
    close(
        adv,
        [
            # 1+0.2, 1+0.2, 1+0.3, 1+0.3, 1+0.4, masked
            [1.2, 1.2, 1.3, 1.3, 1.4, 0.0],
            # -1, -1+0.7, -1+0.7, -1, masked, masked
            [-1.0, -0.3, -0.3, -1.0, 0.0, 0.0],
            [0.5] * 6,
        ],
    )
    assert (adv[mask == 0] == 0).all()


def test_token_advantages_overlap_later_span_wins_and_negative_start_clips():
    # spans (0, 3) and (2, 5) overlap at token 2: it takes anchor 1's 0.2, not 0.1 + 0.2.
    adv = token_advantages(
        torch.tensor([0.0]), torch.tensor([[0.1, 0.2]]), [2], [[(0, 3), (2, 5)]], torch.ones(1, 6)
    )
    close(adv, [[0.1, 0.1, 0.2, 0.2, 0.2, 0.0]])
    # (-2, 1) clips to token 0 only
    adv = token_advantages(torch.tensor([0.0]), torch.tensor([[0.1, 0.2]]), [2], [[(-2, 1)]], torch.ones(1, 3))
    close(adv, [[0.1, 0.0, 0.0]])


def test_token_advantages_rejects_bad_input():
    one = torch.tensor([0.0])
    step = torch.tensor([[0.1, 0.2]])
    mask = torch.ones(1, 4)
    with pytest.raises(ValueError, match="n_anchors"):
        token_advantages(one, step, [3], [[]], mask)  # more gold anchors than step_adv columns
    with pytest.raises(ValueError, match="ends before it starts"):
        token_advantages(one, step, [2], [[(3, 1)]], mask)
    with pytest.raises(ValueError, match="batch sizes differ"):
        token_advantages(torch.tensor([0.0, 0.0]), step, [2], [[]], mask)
    with pytest.raises(TypeError, match="floating-point"):
        token_advantages(torch.tensor([0]), step, [2], [[]], mask)


def test_group_functions_reject_bad_input():
    with pytest.raises(TypeError, match="floating-point"):
        group_step_advantages(torch.tensor([[1, 0]]))
    with pytest.raises(ValueError, match="2 dims"):
        intra_step_advantages(torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="no rollouts"):
        final_advantages(torch.zeros(0))
    with pytest.raises(ValueError, match="group sizes differ"):
        bilevel_group_advantages(R3, torch.tensor([1.0, 0.0]))


def test_dtype_and_device_preserved_and_no_grad():
    r = R3.to(torch.float64).requires_grad_()
    final = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64, requires_grad=True)
    final_adv, step_adv = bilevel_group_advantages(r, final)
    for out in (final_adv, step_adv, intra_step_advantages(r)):
        assert out.dtype == torch.float64 and out.device == r.device
        assert not out.requires_grad  # advantages are constants in the policy-gradient loss
    adv = token_advantages(final_adv, step_adv, [3, 3, 3], [[(0, 1)]] * 3, torch.ones(3, 2, dtype=torch.bool))
    assert adv.dtype == torch.float64 and adv.device == r.device
    assert bilevel_group_advantages(R3.half(), final.half())[1].dtype == torch.float16


def test_char_spans_to_token_spans():
    # text: "<p>x: 1</p>\n"; token 0 is a special token with the usual zero-width (0, 0) offsets.
    offsets = [(0, 0), (0, 3), (3, 5), (5, 9), (9, 10), (10, 14)]
    spans = [
        (3, 9),  # exactly tokens 2 and 3 -> (2, 4)
        (4, 10),  # overlaps tokens 2 (3 < 10, 5 > 4), 3 and 4 -> (2, 5)
        (0, 3),  # token 1; the zero-width token 0 overlaps nothing -> (1, 2)
        (5, 9),  # token 2 ends at 5, which does not overlap [5, 9) -> (3, 4)
        (14, 20),  # past the last token -> empty (0, 0), keeping anchor positions aligned
        (5, 5),  # empty span -> (0, 0)
    ]
    assert char_spans_to_token_spans(spans, offsets) == [(2, 4), (2, 5), (1, 2), (3, 4), (0, 0), (0, 0)]
    assert char_spans_to_token_spans([], offsets) == []
    with pytest.raises(ValueError, match="bad character span"):
        char_spans_to_token_spans([(5, 3)], offsets)
    with pytest.raises(ValueError, match="bad character span"):
        char_spans_to_token_spans([(-1, 2)], offsets)


def test_each_mode_is_one_function_named_in_the_one_list():
    """Hand-computed: r = [[1, 1], [0, 1]]. Group z-scores: anchor 0 -> [+1, -1], anchor 1 (all equal) -> 0.
    Intra term r * (1 + mean of later r): [[2, 1], [0, 1]]. Bilevel (lam 0.3): [[1.6, 0.3], [-1, 0.3]]."""
    from stepcode.training.advantages import STEP_ADVANTAGES
    from stepcode.training.modes import MODES

    assert tuple(STEP_ADVANTAGES) == tuple(MODES)
    r = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    expected = {"terminal": [[0.0, 0.0], [0.0, 0.0]], "step": [[1.0, 0.0], [-1.0, 0.0]],
                "bilevel": [[1.6, 0.3], [-1.0, 0.3]]}
    for mode, want in expected.items():
        got = STEP_ADVANTAGES[mode](r, 0.3, 1e-6)
        assert torch.allclose(got, torch.tensor(want), atol=1e-5), (mode, got)
        _, step_adv = bilevel_group_advantages(r, torch.tensor([1.0, 0.0]), mode=mode, lam=0.3)
        assert torch.allclose(step_adv, torch.tensor(want), atol=1e-5), mode


# --- per-rollout anchor masks (input task: each rollout is judged on the trace of its own committed input) --------

def prefix_mask(widths, n):
    """mask[g, i] = i < widths[g]: the anchor positions rollout g has (built here by hand, not by the code)."""
    return torch.tensor([[i < w for i in range(n)] for w in widths])


def test_intra_term_averages_over_the_rollouts_own_anchors_not_the_group_width():
    # r = [1, 1] with n = 2, in a group whose widest trace has 4 anchors (columns 2, 3 are padding).
    #   own anchors:  anchor 0: 1 * (1 + mean(r_1)) = 1 * (1 + 1) = 2;  anchor 1 (its last): 1 * (1 + 0) = 1
    #   read as the padded [1, 1, 0, 0] (the old behaviour): anchor 0: 1 * (1 + mean(1, 0, 0)) = 4/3; anchor 1:
    #   1 * (1 + mean(0, 0)) = 1. With lam = 0.3 and G = 1 (z-scores 0): A_step = [0.6, 0.3] vs [0.4, 0.3].
    r = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    mask = prefix_mask([2], 4)
    close(intra_step_advantages(r, mask), [[2.0, 1.0, 0.0, 0.0]])
    close(intra_step_advantages(r), [[4 / 3, 1.0, 0.0, 0.0]])
    _, step_adv = bilevel_group_advantages(r, torch.tensor([1.0]), lam=0.3, mask=mask)
    close(step_adv, [[0.6, 0.3, 0.0, 0.0]])


# Three rollouts with traces of 2, 3 and 4 anchors (their committed inputs took different paths); columns past a
# rollout's width are padding, set to 99 so that any use of them shows.
RW = torch.tensor([[1.0, 0.0, 99.0, 99.0],
                   [1.0, 1.0, 0.0, 99.0],
                   [0.0, 1.0, 1.0, 1.0]])
MW = prefix_mask([2, 3, 4], 4)
# Group term, each anchor over the rollouts that have it:
#   anchor 0, all three [1, 1, 0]: mean 2/3, population std sqrt((1/9 + 1/9 + 4/9) / 3) = sqrt(2)/3
#     -> (1/3)/(sqrt(2)/3) = 1/sqrt(2), 1/sqrt(2), (-2/3)/(sqrt(2)/3) = -sqrt(2)
#   anchor 1, all three [0, 1, 1]: -sqrt(2), 1/sqrt(2), 1/sqrt(2)
#   anchor 2, rollouts 1, 2 only [0, 1]: mean 1/2, std 1/2 -> -1, +1   (padded, [0, 0, 1] would give sqrt(2) to row 2)
#   anchor 3, rollout 2 only [1]: nothing to compare -> 0
RW_GROUP = [[1 / S2, -S2, 0.0, 0.0], [1 / S2, 1 / S2, -1.0, 0.0], [-S2, 1 / S2, 1.0, 0.0]]
# Intra term over each rollout's own anchors:
#   row 0 [1, 0]:       1 * (1 + 0) = 1;  0                                              -> [1, 0]
#   row 1 [1, 1, 0]:    1 * (1 + mean(1, 0)) = 1.5;  1 * (1 + 0) = 1;  0                -> [1.5, 1, 0]
#   row 2 [0, 1, 1, 1]: 0;  1 * (1 + mean(1, 1)) = 2;  1 * (1 + 1) = 2;  1 (last)      -> [0, 2, 2, 1]
RW_INTRA = [[1.0, 0.0, 0.0, 0.0], [1.5, 1.0, 0.0, 0.0], [0.0, 2.0, 2.0, 1.0]]
# Bilevel, lam = 0.3: group + 0.3 * intra
RW_BILEVEL = [[1 / S2 + 0.3, -S2, 0.0, 0.0],
              [1 / S2 + 0.45, 1 / S2 + 0.3, -1.0, 0.0],
              [-S2, 1 / S2 + 0.6, 1.0 + 0.6, 0.3]]


def test_group_of_widths_2_3_4_by_hand():
    close(group_step_advantages(RW, mask=MW), RW_GROUP)
    close(intra_step_advantages(RW, MW), RW_INTRA)
    close(step_advantages(RW, lam=0.3, mask=MW), RW_BILEVEL)
    # finals [1, 0, 0]: mean 1/3, std sqrt(2)/3 -> (2/3)/(sqrt(2)/3) = sqrt(2), (-1/3)/(sqrt(2)/3) = -1/sqrt(2)
    expected_final = [S2, -1 / S2, -1 / S2]
    expected = {"bilevel": RW_BILEVEL, "step": RW_GROUP, "terminal": [[0.0] * 4] * 3}
    for mode, want in expected.items():
        final_adv, step_adv = bilevel_group_advantages(RW, torch.tensor([1.0, 0.0, 0.0]), mode=mode, lam=0.3,
                                                       mask=MW)
        close(final_adv, expected_final)
        close(step_adv, want)
        assert (step_adv[~MW] == 0).all()                      # exactly 0 where a rollout has no anchor
    # The padding's value never matters: 0 instead of 99 gives the same advantages.
    padded_with_zeros = torch.where(MW, RW, torch.zeros_like(RW))
    close(bilevel_group_advantages(padded_with_zeros, torch.tensor([1.0, 0.0, 0.0]), mask=MW)[1], RW_BILEVEL)


def test_output_task_missing_print_is_a_zero_reward_and_numbers_are_unchanged():
    # Output task: every rollout is judged on the same 3 gold anchors, so the mask is full. Rollout 1 wrote one
    # print and stopped: its anchors 1 and 2 are missing prints, i.e. 0 rewards that count in the statistics.
    r = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    # Group: anchor 0 [1, 1, 0] -> 1/sqrt(2), 1/sqrt(2), -sqrt(2); anchors 1 and 2 [1, 0, 1] -> 1/sqrt(2), -sqrt(2),
    #   1/sqrt(2) (the missing prints are the -sqrt(2)s).
    # Intra: row 0 [1, 1, 1] -> [2, 2, 1]; row 1 [1, 0, 0] -> [1 * (1 + mean(0, 0)), 0, 0] = [1, 0, 0];
    #   row 2 [0, 1, 1] -> [0, 2, 1].  Bilevel lam = 0.3: group + 0.3 * intra.
    expected = [[1 / S2 + 0.6, 1 / S2 + 0.6, 1 / S2 + 0.3],
                [1 / S2 + 0.3, -S2, -S2],
                [-S2, 1 / S2 + 0.6, 1 / S2 + 0.3]]
    final = torch.tensor([1.0, 0.0, 1.0])
    unmasked = bilevel_group_advantages(r, final, lam=0.3)
    full = bilevel_group_advantages(r, final, lam=0.3, mask=torch.ones(3, 3, dtype=torch.bool))
    close(unmasked[1], expected)
    for a, b in zip(unmasked, full):
        assert torch.equal(a, b)                    # a full mask is bit-for-bit the unmasked computation


def test_a_single_anchor_rollout_gets_no_step_term_but_counts_at_anchor_0():
    # Widths 1, 3, 3: row 0's only anchor is its return value (terminal reward only), but it has position 0.
    r = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    mask = prefix_mask([1, 3, 3], 3)
    # Group: anchor 0 [1, 0, 1] -> 1/sqrt(2), -sqrt(2), 1/sqrt(2); anchor 1 rows 1, 2 [1, 1] -> 0;
    #   anchor 2 rows 1, 2 [1, 0] -> +1, -1.
    # Intra: row 1 [0, 1, 1] -> [0, 2, 1]; row 2 [1, 1, 0] -> [1 * (1 + mean(1, 0)), 1 * (1 + 0), 0] = [1.5, 1, 0].
    # Bilevel lam = 0.3; row 0 -> 0 everywhere.
    _, step_adv = bilevel_group_advantages(r, torch.tensor([1.0, 0.0, 0.0]), lam=0.3, mask=mask)
    close(step_adv, [[0.0, 0.0, 0.0], [-S2, 0.6, 1.0 + 0.3], [1 / S2 + 0.45, 0.3, -1.0]])


def test_mode_functions_take_the_mask():
    """r = [[1, 1], [0, -]] (row 1 has one anchor). Group: anchor 0 [1, 0] -> +1, -1; anchor 1 only row 0 -> 0.
    Intra: row 0 [2, 1]; row 1 [0]. Mode functions: bilevel [[1.6, 0.3], [-1, 0]], step [[1, 0], [-1, 0]].
    Through bilevel_group_advantages row 1 (one anchor) gets 0: [[1.6, 0.3], [0, 0]] and [[1, 0], [0, 0]]."""
    from stepcode.training.advantages import STEP_ADVANTAGES

    r = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    direct = {"terminal": [[0.0, 0.0], [0.0, 0.0]], "step": [[1.0, 0.0], [-1.0, 0.0]],
              "bilevel": [[1.6, 0.3], [-1.0, 0.0]]}
    grouped = {"terminal": [[0.0, 0.0], [0.0, 0.0]], "step": [[1.0, 0.0], [0.0, 0.0]],
               "bilevel": [[1.6, 0.3], [0.0, 0.0]]}
    for mode in STEP_ADVANTAGES:
        close(STEP_ADVANTAGES[mode](r, 0.3, 1e-6, mask), direct[mode])
        close(bilevel_group_advantages(r, torch.tensor([1.0, 0.0]), mode=mode, lam=0.3, mask=mask)[1], grouped[mode])


def test_masked_zscore_edge_cases():
    # A position nobody has, and one where the present values agree: exact zeros, no NaN.
    r = torch.tensor([[0.7, 1.0, 0.0], [0.7, 0.0, 0.0], [0.7, 1.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False], [True, True, False]])
    assert torch.equal(group_step_advantages(r, mask=mask), torch.zeros(3, 3))


def test_mask_must_be_a_bool_tensor_of_the_rewards_shape():
    with pytest.raises(TypeError, match="bool"):
        bilevel_group_advantages(R3, torch.tensor([1.0, 0.0, 1.0]), mask=torch.ones(3, 3))
    with pytest.raises(ValueError, match="mask has shape"):
        bilevel_group_advantages(R3, torch.tensor([1.0, 0.0, 1.0]), mask=torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask has shape"):
        intra_step_advantages(R3, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="torch.Tensor"):
        group_step_advantages(R3, mask=[[True] * 3] * 3)
