"""Whether a map or an alert can be trusted: the model-parameter randomisation sanity check, the
causal intervention with artifact examples.
"""
