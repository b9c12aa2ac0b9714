"""A nightly job as one YAML file: ``lightning-sas audit --config job.yaml``.

The file ``--config`` names may hold, beside LightningCLI's ``model:`` section (the model's
constructor arguments, :func:`~lightning_sas.cli.init_args.read_config`), an ``audit:`` section
whose keys are the audit's own options, spelled as on the command line without the dashes
(``min-enrichment`` or ``min_enrichment``)::

    model:
      init_args: {num_classes: 2}
    audit:
      checkpoint: runs/last.ckpt
      model: my_project.models:LesionClassifier
      probe: probes/images
      masks: probes/rulers
      methods: [sas, gradcam]
      image-size: 64
      out: audits/nightly
      overwrite: true

Each key becomes the option's default, so an option given on the command line wins over the
file, and an option the file gives is no longer required on the command line. Values are read
exactly as the command line reads them (the same checks, the same messages); a list is a
comma-separated option's items (``methods``, ``class-names``) or a multi-value option's values
(``mean``, ``image-size``); an option whose value may be left out takes ``true`` for the option
alone (``probes-from-checkpoint: true``). Relative paths are relative to the working directory,
as on the command line. The training callback reads the same section
(:meth:`SASAuditCallback.from_config <lightning_sas.callback.audit_callback.SASAuditCallback.from_config>`,
:mod:`lightning_sas.callback.job_config`).

Only the standard library is imported with this module; PyYAML is imported when a file is read.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_sas.cli.errors import UsageError

#: The section of ``--config`` that holds the audit's options.
AUDIT_SECTION = "audit"


def job_options(argv: list[str]) -> tuple[str, dict[str, Any]] | None:
    """``("--config PATH", the audit: section)`` of ``audit --config PATH`` in ``argv`` (how messages
    name the file, and its options), or ``None`` without one.

    Raises:
        UsageError: If the file cannot be read, is not YAML, or its ``audit:`` section is not a mapping.
    """
    if not argv or argv[0] != "audit":
        return None
    finder = argparse.ArgumentParser(add_help=False)
    finder.add_argument("--config")
    path = finder.parse_known_args(argv[1:])[0].config
    if path is None:
        return None
    from lightning_sas.cli.init_args import _load_yaml
    from lightning_sas.cli.model_import import ModelLoadError

    try:
        content = _load_yaml(Path(path).read_text(encoding="utf-8"), f"--config {path}")
    except (OSError, UnicodeDecodeError):
        return None  # reported with the model's arguments, where the file is read again
    except ModelLoadError as error:
        raise UsageError(str(error)) from None
    section = content.get(AUDIT_SECTION) if isinstance(content, dict) else None
    if section is None:
        return None
    if not isinstance(section, dict):
        raise UsageError(f"--config {path}: the audit: section must be a mapping of options, got {section!r}.")
    return f"--config {path}", section


def apply_job(parser: argparse.ArgumentParser, source: str, job: Mapping[str, Any]) -> None:
    """Make each option of ``job`` the default of ``parser``'s option (no longer required).

    Raises:
        UsageError: For a key that is not one of the parser's options (with the nearest names),
            or ``config`` itself.
    """
    # argparse keeps no public list of a parser's options.
    actions = {action.dest: action for action in parser._actions if action.option_strings}
    names = sorted(dest.replace("_", "-") for dest in actions if dest not in ("help", "config"))
    for key, value in job.items():
        dest = str(key).replace("-", "_")
        if dest not in actions or dest in ("help", "config"):
            near = difflib.get_close_matches(str(key).replace("_", "-"), names, n=3)
            hint = f" (did you mean {', '.join(near)}?)" if near else f"; options: {', '.join(names)}"
            raise UsageError(f"{source}: audit.{key} is not an option of 'audit'{hint}.")
        action = actions[dest]
        action.default = _as_command_line(action, value, f"{source}: audit.{key}")
        action.required = False


def _as_command_line(action: argparse.Action, value: Any, where: str) -> Any:
    """``value`` in the form the command line gives it, so argparse and the audit read it the same way."""
    if value is None:
        return None
    if action.nargs == 0:  # a switch (store_true)
        if not isinstance(value, bool):
            raise UsageError(f"{where} is a switch: true or false, got {value!r}.")
        return value
    if action.nargs == "?" and isinstance(value, bool):  # an optional value: true is the option given bare
        return action.const if value else None
    values = list(value) if isinstance(value, list | tuple) else [value]
    if action.nargs in ("+", "*") or isinstance(action.default, list):  # several values, or a repeatable option
        return [_text(item) for item in values]
    if isinstance(value, list | tuple):
        return ",".join(_text(item) for item in values)  # a comma-separated option (methods, class names)
    return _text(value)


def _text(value: Any) -> str:
    if isinstance(value, bool):  # YAML reads `off` as false: a criterion switched off
        return "true" if value else "off"
    if isinstance(value, dict):
        import json

        return json.dumps(value)
    return str(value)
