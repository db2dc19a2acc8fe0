"""The bug zoo: small, realistic training scripts, each with one classic mistake.

Every script has ``train(mistake=True)``, which runs the training loop with its mistake under
``gradscope.watch`` and returns the (closed) watch, and ``EXPECT``, what the top finding of
``watch.diagnose()`` must say. ``train(mistake=False)`` runs the same model trained correctly:
the healthy zoo, where no finding may be an error or a warning. Run one by hand with
``python -m zoo.<name>`` from ``tests/diagnose``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SCRIPTS", "Expect"]


@dataclass(frozen=True)
class Expect:
    """What the top finding of a zoo script must say."""

    kind: str
    params: frozenset[str] = field(default_factory=frozenset)  # every one of these is named
    module: str | None = None  # the finding's module, when it must be one
    words: tuple[str, ...] = ()  # found in the message or the evidence (the op, the cut)


SCRIPTS = [
    "detached_layer",
    "forgot_zero_grad",
    "not_in_optimizer",
    "frozen_by_mistake",
    "lr_zero_group",
    "log_of_negative",
    "div_by_zero_std",
    "sqrt_at_zero_backward",
    "lr_too_high",
    "lr_too_low",
    "vanishing_sigmoid",
    "exploding_rnn",
    "dead_relu_bias",
    "gradscaler_overflow",
    "clip_too_low",
    "loss_on_detached_output",
    "unused_branch",
    "no_grad_region",
    "nan_in_data",
]
