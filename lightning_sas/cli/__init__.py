"""The lightning-sas command: audit and export-probes, and loading models from checkpoints."""
