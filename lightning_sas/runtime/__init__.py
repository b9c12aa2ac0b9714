"""How the audit runs the model without the training run noticing: output selection (the model
wrapped once), attribution mode (modes, grads, RNG restored), agreement between DDP ranks, pass
accounting for progress bars.
"""
