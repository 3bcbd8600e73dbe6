"""The unbiased pass@k estimator of the Codex paper (Chen et al. 2021), as CRUXEval and LiveCodeBench compute it.

    from stepcode.evals.passk import pass_at_k, mean_pass_at_k
    pass_at_k(n=10, c=3, k=1)                  # 0.3
    pass_at_k(n=10, c=3, k=5)                  # 0.9166...
    mean_pass_at_k([[True, False], [False, False]], k=1)    # 25.0 (percent, mean over samples)

pass@k = 1 - C(n-c, k) / C(n, k), computed as the product 1 - prod_{i=n-c+1..n} (1 - k/i): no binomial
coefficients, so no overflow or cancellation for large n. Upstream quirk kept on purpose: when n - c < k the value is
1.0, which also holds when n < k (a sample with 3 generations, none correct, has "pass@5" = 1.0). That is why the
published n=3 files report pass@5 = 100; compare pass@k only where every sample has n >= k.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k draws (without replacement) from n generations, c of them correct, is
    correct."""
    for name, v in (("n", n), ("c", c), ("k", k)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"pass_at_k: {name} must be an int, got {type(v).__name__}")
    if n < 1:
        raise ValueError(f"pass_at_k: n must be >= 1 (no generations to estimate from), got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c must be in [0, n={n}], got {c}")
    if k < 1:
        raise ValueError(f"pass_at_k: k must be >= 1, got {k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(results: Sequence[Sequence[bool]], k: int) -> float:
    """pass@k in percent, averaged over samples; `results` holds one list of per-generation verdicts per sample."""
    if not results:
        raise ValueError("mean_pass_at_k: no samples")
    return 100.0 * sum(pass_at_k(len(r), sum(map(bool, r)), k) for r in results) / len(results)
