"""Nightly audits at scale: many checkpoints, many processes, results cached by content.

* :mod:`~lightning_sas.nightly.checkpoints`: ``--checkpoint`` values (files, folders, globs)
  expanded into the checkpoints to audit, named and ordered by training step.
* :mod:`~lightning_sas.nightly.cache`: finished audits stored under a hash of everything that
  decides their result, written whole or not at all: a re-run over unchanged checkpoints costs
  nothing and a job killed half-way resumes.
* :mod:`~lightning_sas.nightly.processes`: several processes, devices and nodes with Lightning
  Fabric; who audits which checkpoint, and which are audited by all ranks together.
"""
