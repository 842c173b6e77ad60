"""The numerics version: with the trial_id (sweep/identity.py), the identity of what a trial computes.

A trial_id hashes a trial's config; the numbers that config produces also depend on the code: the sampler, the
initialization, the loss normalization, the parametrization. Every change that alters them bumps VERSION. Each
run records the version it was computed with (tag `sgdlab.numerics`; runs recorded before the tag existed are
version 1). Runs of another version are not skipped as finished: `sgdlab status` counts their trials as
`outdated`, `sgdlab sweep` reruns them as new attempts, and reports leave their numbers out.

History:
  1  counter-based batches of (seed, step) and initial weights of (seed, tensor, index) (2026-11-27).
  2  batches of B <= P/2 points: the first B distinct values of a counter-based stream of uniform indices, O(B)
     per step, instead of the B smallest of P keys (training/sampler.py); initial weights unchanged (2026-12-01).
  3  mnist1d_parity draws exactly P training and n_test test signals from a pool of 10 ceil((P + n_test) / 10)
     (before: mnist1d's own split gave P - 1 or P - 3 and another pool), so its trials' data differ (2026-12-03).
"""

VERSION = 3
