"""The built-in reference rules, one module per family of torch.optim update rules."""
