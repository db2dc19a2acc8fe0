"""Every number the diagnosis compares against, and where it comes from.

Two kinds of source: **conventions** (rules of thumb practitioners use, cited) and
**calibrated** values, set with a margin from the healthy zoo in ``tests/diagnose`` (the same
small models trained correctly: LeNet, an MLP, a CNN with BatchNorm, a TransformerEncoder, a
GRU and an LSTM, with SGD, SGD with momentum, Adam and AdamW) so that none of them shows an
error or a warning, while every script of the bug zoo does. The README lists them too.
"""

from __future__ import annotations

__all__ = [
    "CARRIED_FRACTION",
    "CLIP_ALWAYS_FRACTION",
    "CLIP_FAR_BELOW",
    "DEAD_FRACTION",
    "DEAD_MIN_PASSES",
    "DEPTH_MIN_LAYERS",
    "DEPTH_RATIO",
    "EXPLODING_GROWTH",
    "MIN_STEPS",
    "SCALE_COLLAPSE",
    "SKIPPED_FRACTION",
    "UPDATE_RATIO_HIGH",
    "UPDATE_RATIO_LOW",
    "UPDATE_RATIO_TYPICAL",
    "UPDATE_STEP_HIGH",
]

# Update-to-weight ratio |Δp| / |p| per step, weight matrices only. Convention: "somewhere
# around 1e-3" (A. Karpathy, CS231n notes, "Neural Networks Part 3", ratio of updates to
# weights); much lower means a learning rate probably too low, much higher one too high. The
# band is a convention (two decades either side) checked against the healthy zoo, whose
# medians span 3.3e-5 (SGD with layer-wise lr decay) to 5e-2 (SGD with momentum on a tiny
# transformer; Adam at lr 1e-3 on small layers sits near 1e-2) and whose largest single step
# is 0.06; the zoo's lr 1000x too low gives medians 3e-7..7e-6, its lr 100x too high single
# steps of 0.7-0.95 (the weights then grow, so its median falls back to ~0.1).
UPDATE_RATIO_TYPICAL = 1e-3
UPDATE_RATIO_LOW = 1e-5
UPDATE_RATIO_HIGH = 0.1
UPDATE_STEP_HIGH = 0.5  # one step that changes a weight matrix by half is too large
# Steps needed before a per-step rule (update ratio, not updated, clipping) speaks.
MIN_STEPS = 5

# Vanishing / exploding across depth: the RMS gradient of the weight layer nearest the input
# against the one nearest the output, median over the recorded passes. Convention: "orders of
# magnitude" (Glorot & Bengio 2010; Hochreiter 1991) made concrete as 3 orders; the healthy zoo
# stays within 1.5 orders. Only for models with at least DEPTH_MIN_LAYERS weight layers.
DEPTH_RATIO = 1e3
DEPTH_MIN_LAYERS = 4

# Exploding over passes: the total gradient norm of the newest passes against the median of the
# first ones. Calibrated: healthy runs grow at most ~30x (the zoo: 8x); a recurrent net without
# clipping grows 1e4x and more before it overflows.
EXPLODING_GROWTH = 1e3

# Dead units: the share of a layer's units (elements of a bias or a norm layer's parameters)
# whose gradient was exactly zero for each of the last DEAD_MIN_PASSES passes. Calibrated: a
# healthy ReLU layer of the zoo has at most ~15% such units; bad bias init kills 90-100%.
DEAD_FRACTION = 0.5
DEAD_MIN_PASSES = 10

# .grad never cleared: the share of optimizer steps after which the next backward pass still
# found a non-zero .grad. Convention: zero_grad() once per step, so a correct loop scores 0 and
# gradient accumulation over k passes still starts every window from zero.
CARRIED_FRACTION = 0.9

# Clipping: active (the gradient's norm cut) on at least this share of the steps, and the
# median clip coefficient (max_norm / total norm) below CLIP_FAR_BELOW for a warning (the
# threshold ten times below the gradient's usual size). Calibrated on the healthy
# TransformerEncoder clipped at max_norm=1.0, which cuts on most early steps by at most ~3x.
CLIP_ALWAYS_FRACTION = 0.9
CLIP_FAR_BELOW = 0.1

# GradScaler: the share of recent passes with NaN/Inf (scaled) gradients, i.e. skipped steps;
# the scale is collapsing when it fell SCALE_COLLAPSE-fold below its peak. Convention: torch's
# GradScaler halves the scale per skipped step and doubles it every 2000 clean ones, so a few
# skips early are normal and 2**10 (ten skips in a row net of growth) is not.
SKIPPED_FRACTION = 0.5
SCALE_COLLAPSE = 2.0**10
