"""The optimizer pillar: from an optimizer's state to a reference step to a verdict.

``check`` and ``verify`` are the public faces (``check_step``, ``verify_optimizer``); ``hooks``
validates their arguments and tells the outermost ``step()`` apart; ``plan`` runs the reference
rule (``rules/``, mapped to classes by ``references``) before a step, on whole param groups
through ``arrays.Many`` (``single``: one parameter at a time), into a ``batch``; ``compare`` and
``compare_state`` judge parameters and state entries after it within ``tolerance``, with
``diagnose`` naming the likely mistake, into ``step_report.StepReport``; ``shadow`` is what the
reference remembers between checked steps.
"""
