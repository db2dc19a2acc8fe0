"""The diagnosis pillar: from what a watch recorded to named causes (``Watch.diagnose()``).

``finding`` holds the :class:`Finding` type and the vocabulary of kinds, ``thresholds`` every
number a rule compares against (with where it comes from), ``diagnosis`` the ordered
:class:`Diagnosis`, and one module per family of rules: ``nonfinite`` (NaN/Inf in forward,
backward or the loss), ``connectivity`` (no gradient, not in the optimizer, frozen),
``updates`` (steps that do not move, update-to-weight ratios), ``loop`` (``.grad`` never
cleared, clipping, GradScaler) and ``flow`` (vanishing, exploding, dead units). ``diagnose``
runs them all on an :class:`~gradscope._watch.evidence.Evidence` and orders what they found.
Everything here runs on read; nothing runs in the training loop.
"""
