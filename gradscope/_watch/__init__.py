"""The watch pillar: from a backward pass to a record.

``recorder`` holds the hooks (one tensor hook per parameter, one end-of-pass callback), ``stats``
computes the norms and NaN/Inf counts, ``records`` holds :class:`BackwardRecord` and
:class:`GradRecord`, and ``watch`` is the public :class:`Watch` that validates options, reads
records and explains what went wrong. Reporting (tables, HTML) lives in ``gradscope._report.html``.
"""
