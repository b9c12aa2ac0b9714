"""The probe set as data: reading dataset items, the probe set and its manifest (``probe_set``),
probe folders on disk (``folder``, ``labels``, ``artifact_folder``, ``images``, ``errors``),
exporting a Dataset to a probe folder (``export``, ``export_artifacts``, ``export_folder``).
"""
