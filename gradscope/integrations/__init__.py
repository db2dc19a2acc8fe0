"""Where people train: callbacks for PyTorch Lightning and Hugging Face ``Trainer``, and
TensorBoard logging. Needs the ``integrations`` extra: ``pip install gradscope[integrations]``.

Import the module for your framework; ``import gradscope`` never imports any of them::

    from gradscope.integrations.lightning import GradscopeCallback      # lightning.pytorch
    from gradscope.integrations.transformers import GradscopeCallback   # transformers.Trainer
    from gradscope.integrations.tensorboard import log_watch            # SummaryWriter
"""
