"""The report pillar: from records (and a captured graph) to something a person reads.

``summary`` is the fixed-width per-parameter table (:class:`Summary`), ``plots`` draws the
gradient-flow and norm charts with matplotlib (imported lazily), ``html`` writes the
self-contained ``report.html``. It reads records; it never installs hooks.
"""
