"""The command line: ``gradscope demo`` and ``gradscope graph TARGET``.

``main`` parses arguments and turns errors into one line, ``demo`` retells the tutorial,
``target`` loads a model factory and makes its inputs, ``progress`` prints the steps.
"""
