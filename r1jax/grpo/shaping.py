"""④ Reward shaping on the host, before advantages: DAPO's soft overlong punishment (Yu et al. 2025,
"DAPO", eq. 13).

    rewards_b = rewards.rewards + overlong_penalty(rollout.completion_lens_b, max_new_tokens,
                                                   cfg.overlong_buffer, cfg.overlong_penalty_factor)
    adv_b = advantages(rewards_b, G, ...)

Pure NumPy (no jax): the penalty depends only on lengths the host already has.
"""

from __future__ import annotations

import numpy as np


def overlong_penalty(lengths_b, max_len: int, buffer: int, factor: float = 1.0) -> np.ndarray:
    """float32 [B]: factor × R_length(|y|) of DAPO eq. 13, with L_max = max_len, L_cache = buffer:

        R_length(|y|) = 0                                  if |y| <= L_max - L_cache
                      = ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
                      = -1                                  if |y| > L_max

    i.e. 0 up to max_len - buffer, then linear down to -1 at max_len. lengths_b: completion lengths
    in tokens (the rollout's completion_lens_b); max_len: the length cap (the rollout's
    max_new_tokens). buffer = 0 turns it off (all zeros: there is no ramp to speak of)."""
    len_b = np.asarray(lengths_b)
    if len_b.ndim != 1:
        raise ValueError(f"overlong_penalty: lengths_b must be 1-D, got shape {len_b.shape}")
    if np.any(len_b < 0):
        raise ValueError(f"overlong_penalty: lengths_b must be >= 0, got min {len_b.min()}")
    if max_len < 1:
        raise ValueError(f"overlong_penalty: max_len must be >= 1, got {max_len}")
    if not 0 <= buffer <= max_len:
        raise ValueError(f"overlong_penalty: buffer must be in [0, max_len={max_len}], got {buffer}")
    if factor < 0:
        raise ValueError(f"overlong_penalty: factor must be >= 0, got {factor}")
    if buffer == 0:
        return np.zeros(len_b.shape, np.float32)
    len_b = len_b.astype(np.float64)
    expected = max_len - buffer  # L_max - L_cache: the longest completion that is not punished
    ramp_b = np.clip((expected - len_b) / buffer, -1.0, 0.0)  # 0 below, linear in the buffer, -1 from max_len
    return (factor * ramp_b).astype(np.float32)
