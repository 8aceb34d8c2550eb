"""ACT-R activation of a chunk: base-level learning plus similarity to the retrieval cue.

Base-level learning (Anderson & Lebiere 1998): a chunk presented (created or retrieved) at
times t_1..t_n ago has

    B = ln( sum_j t_j ** -d )

with decay d (0.5 in ACT-R's default). Recent and frequent use raise B; an unused chunk's B
falls with the log of its age. Ages are clamped to ``MIN_AGE`` seconds so a chunk used this
instant has a finite activation.

Partial matching: the cue's similarity to the chunk, sim in [-1, 1] (cosine similarity of
their embeddings, from pgvector), enters as P * (sim - 1): 0 for a perfect match, down to -2P
for the opposite, P being the mismatch penalty. Activation A = B + P * (sim - 1); a retrieval
returns the chunks of highest A at or above the retrieval threshold tau (when one is set).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

MIN_AGE = 0.05  # seconds


def base_level(ages: Iterable[float], decay: float) -> float:
    """B = ln(sum t_j^-d) over the access ages in seconds; -inf for a chunk never accessed."""
    if decay <= 0:
        raise ValueError(f"decay must be positive, not {decay}")
    total = sum(max(age, MIN_AGE) ** -decay for age in ages)
    return math.log(total) if total > 0 else -math.inf


def activation(base: float, similarity: float, mismatch_penalty: float) -> float:
    """A = B + P * (sim - 1)."""
    if not -1.0 - 1e-9 <= similarity <= 1.0 + 1e-9:
        raise ValueError(f"similarity must be in [-1, 1], not {similarity}")
    return base + mismatch_penalty * (similarity - 1.0)


def rank(
    candidates: Iterable[tuple[int, float, Iterable[float]]],
    *,
    decay: float,
    mismatch_penalty: float,
    threshold: float | None,
    limit: int,
) -> list[tuple[int, float, float, float]]:
    """The ``limit`` best of (chunk id, similarity, access ages) by activation.

    Returns (id, activation, base level, similarity), best first, dropping chunks below the
    threshold; ties keep the more similar chunk first.
    """
    scored = []
    for chunk_id, similarity, ages in candidates:
        base = base_level(ages, decay)
        value = activation(base, similarity, mismatch_penalty)
        if threshold is None or value >= threshold:
            scored.append((chunk_id, value, base, similarity))
    scored.sort(key=lambda item: (item[1], item[3]), reverse=True)
    return scored[:limit]
