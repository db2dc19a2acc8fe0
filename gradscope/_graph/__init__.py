"""The graph pillar: from ``loss.grad_fn`` to a :class:`Graph` to SVG.

``walk`` turns the autograd graph into plain data (iteratively, keeping no node alive; see
``safe_free``), ``module_tags`` says which module ran each node, ``grad_flow`` records the
gradient that flows through each node during backward, ``build`` is :func:`gradscope.graph`,
``data`` holds the node/edge tables and collapsing, ``graph`` is the public :class:`Graph`,
``dot`` writes DOT source and ``render`` runs a Graphviz renderer. Walking never imports
rendering.
"""
