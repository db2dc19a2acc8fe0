"""The watch pillar: from a backward pass to a record.

``recorder`` holds the hooks (one tensor hook per parameter, one forward pre-hook), ``passes``
says when a ``backward()`` call starts and ends (nested checkpointed passes, passes that raised),
``reading`` takes each pass's norms and NaN/Inf counts where the gradients are (``stats`` defines
them), ``keeping`` decides which tensors records keep, ``records`` holds
:class:`BackwardRecord` and :class:`GradRecord`, and ``watch`` is the public :class:`Watch`
that validates options, reads records and explains what went wrong. Reporting (tables, HTML)
lives in ``gradscope._report``.
"""
