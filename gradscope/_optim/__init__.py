"""The optimizer pillar: from an optimizer's state to a reference step to a verdict.

``check`` captures parameters, gradients and state around one ``optimizer.step()``,
``references`` computes what the step should have done, ``tolerance`` says how close is close
enough for a dtype, ``compare`` turns the differences into per-parameter verdicts,
``step_report`` holds :class:`StepReport`, and ``verify`` checks every step until closed.
"""
