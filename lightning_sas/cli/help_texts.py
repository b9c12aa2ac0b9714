"""The long help texts of ``lightning-sas audit --help`` and ``lightning-sas export-probes --help``."""

from __future__ import annotations

from lightning_sas.audit.verdict import DEFAULT_MIN_ENRICHMENT, DEFAULT_MIN_FLIP_RATE
from lightning_sas.cli.errors import ERROR_LOG
from lightning_sas.probes.artifact_folder import ARTIFACT_MASK_SUFFIX, ARTIFACT_MASKS_FOLDER
from lightning_sas.probes.images import IMAGE_EXTENSIONS

__all__ = ["AUDIT_EPILOG", "ENRICHMENT_DEFAULTS", "EXPORT_EPILOG"]

#: The default per-method ROI enrichment thresholds, in words (for --help).
ENRICHMENT_DEFAULTS = ", ".join(
    f"{'other methods' if name == '*' else name} {value:g}" for name, value in DEFAULT_MIN_ENRICHMENT.items()
)

AUDIT_EPILOG = f"""\
examples:
  # audit last night's checkpoint; exit 1 if the alert rule fires (lift over chance, artifact flips)
  lightning-sas audit \\
      --checkpoint runs/last.ckpt \\
      --model my_project.models:LesionClassifier \\
      --probe probes/images --masks probes/rulers --labels probes/labels.csv \\
      --class-names benign,malignant \\
      --image-size 224 --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 \\
      --methods sas,gradcam --artifacts probes/ruler_patches --artifact-class malignant \\
      --baseline audits/2024-05-01/summary.json \\
      --out audits/2024-05-02

  # a quick look on the CPU with a cheap SaS; a model returning {{"logits": ..., "features": ...}}
  lightning-sas audit --checkpoint last.ckpt --model pkg.mod:Net --output logits --probe probes \\
      --device cpu --sas-iterations 20 --out /tmp/audit --overwrite

  # write a probe folder from the validation split, then audit it
  lightning-sas export-probes --dataset my_project.data:make_val_split --count 32 \\
      --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 --class-names benign,malignant --out probes

probe folder:
  Images ({", ".join(extension[1:] for extension in IMAGE_EXTENSIONS)}) are read in file-name order,
  converted to RGB (or grey with --channels 1), resized to --image-size (N x N, or H x W;
  bilinear), scaled to [0, 1] and, with --mean/--std, normalised as (x - mean) / std (one value
  is used for every channel). Without --mean/--std the model gets [0, 1] inputs. A mask has the
  probe's file name (any image extension) in --masks; nonzero pixels are the region of interest
  (e.g. the ruler). Files that cannot be decoded are skipped and listed in the report.

labels file:
  CSV rows "filename,label" (an optional header row "filename,label"); the label is a class
  index, -1 for unknown, or one of --class-names.

artifacts folder (--artifacts DIR):
  DIR/<name>.png (any image extension) is an example of the artifact, e.g. a ruler cut out of
  a real image; its mask is DIR/{ARTIFACT_MASKS_FOLDER}/<name>.png, or DIR/<name>{ARTIFACT_MASK_SUFFIX}.png beside it,
  or else the patch's alpha channel (nonzero mask pixels = the artifact). A patch of a probe's size
  (--image-size, or a probe file's size) is a whole image: it is resized like the probes and
  pasted where its artifact is. A smaller patch keeps its pixel size and is pasted at seeded
  random positions (patches of several sizes are padded to the largest). Patches are
  converted and normalised like the probes (--channels, --mean/--std). Each probe not already
  predicted as --artifact-class gets --artifact-trials pastes; the flip rate is the share that
  moves the prediction to that class. lightning_sas.probes.export_artifacts.export_artifacts writes this layout.

alert rule (exit status 1), shared with the training callback (lightning_sas.audit.verdict):
  a voting method's ROI enrichment (how far its top-ranked pixels lie on the masks beyond
  chance, pooled over the probes whose mask has at least --min-roi-pixels pixels; 0 is chance,
  1 is every top pixel on the mask) above --min-enrichment (default: per method, measured in
  the alert study: {ENRICHMENT_DEFAULTS}; a number sets one threshold for every method);
  the flip rate above --min-flip-rate (default {DEFAULT_MIN_FLIP_RATE:g}; only with --artifacts);
  a method's mean roi_share above --shortcut-threshold (off unless given). Methods flagged by
  --sanity do not vote, nor do flat maps (no evidence). "off" switches --min-enrichment or
  --min-flip-rate off.

model constructor (--init-args, --config):
  The model is built by load_from_checkpoint with the hyper-parameters saved in the checkpoint
  (save_hyperparameters()), updated by the model: section of --config (init_args:, or the
  arguments directly), then by each --init-args in turn: a given argument wins over a saved one.
  A name the constructor does not take is refused before the checkpoint is loaded.

model output (--output):
  [B, C] logits, or one logit [B] / [B, 1] for a binary classifier, need no --output. For a
  tuple, list or dict output, --output picks the logits: an index (--output 0), a key
  (--output logits) or module:function (--output my_project.heads:logits_of, a callable
  taking the model's output and returning the logits).

cost:
  Before the audit one stderr line estimates its time: one model pass is timed on the probes
  and multiplied by the passes: SaS iterations x 2 x (num_masks - 1) per probe, Grad-CAM 1,
  faithfulness 2 x (steps - 1) per method and probe + 2, intervention trials + 1 per probe,
  --sanity its stages x the methods' passes. On a terminal a progress bar follows.

output (in --out):
  events.out.tfevents.*  TensorBoard, same tags as the training callback (step 0)
  report.html            self-contained report: verdict, overlays and scores per probe,
                         faithfulness, intervention and sanity check
  summary.json           scores (roi_share, roi_lift, roi_mass; deletion/insertion AUCs),
                         "verdict" (alert, reasons, crossed, checked, rule), "intervention",
                         "sanity", probe manifest with content hashes, versions, command;
                         "errors" (failed parts) and "nonfinite" (probes with NaN/inf)
  error.log              only after an unexpected error: its full traceback
  A folder that already holds an audit is refused; --overwrite replaces that audit once this one
  is written (in a new folder beside --out, then renamed): a run that fails leaves it as it was.

exit status:
  0  the alert rule was checked and did not fire (or there was nothing to check)
  1  the alert rule fired (stdout and the report give the reasons and the probes), also when
     another part of the audit failed. A sanity-check flag is a warning, not status 1
  2  anything else, in one line on stderr: usage or input error (bad path, a file that is no
     checkpoint, model output that is not logits, no readable image, a bad --artifacts folder
     or --artifact-class, --out holding an audit); an unexpected exception (traceback in
     <out>/{ERROR_LOG}); an incomplete audit (a method, faithfulness or the sanity check
     failed, a method has no finite score); or a verdict that cannot tell (masks or
     artifacts given but not checkable, a model whose output ignores its input, a discovered
     region that moves predictions but sits mostly on probes labelled as its class, so the
     probes cannot tell it from the object); summary.json and report.html are still written)
"""

EXPORT_EPILOG = f"""\
example:
  # my_project/data.py defines make_val_split() returning the validation Dataset
  lightning-sas export-probes --dataset my_project.data:make_val_split --count 32 --seed 0 \\
      --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 --class-names benign,malignant --out probes
  lightning-sas audit --probe probes --masks probes/masks --labels probes/labels.csv \\
      --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 --class-names benign,malignant ...

data set:
  --dataset names a callable taking no arguments (a function or a class) that returns a
  map-style Dataset (__len__ and __getitem__), imported like --model. Items are an image, a
  tuple (image, label, ...) or a mapping with "image", "label" and "mask" (or "roi") keys;
  --image-key, --label-key and --mask-key give other keys, or positions in tuple items. A
  tuple's ROI mask is read only with --mask-key (e.g. --mask-key 2 for (image, label, roi_mask)):
  a third element may be metadata or an object mask. Images are float [C, H, W] tensors with 1
  or 3 channels, normalised as the model expects.

written (in --out: new, empty, or a previous export, which is replaced):
  probe_<index>.png      the images, de-normalised (x * std + mean), clipped to [0, 1], 8-bit
  masks/probe_<index>.png  the ROI mask of each item with a non-empty ROI (255 = ROI)
  labels.csv             "filename,label" rows, class names when --class-names is given
  manifest.json          data set index, label and sha256 of every file written; selection

exit status:
  0  exported; 2  anything else, in one line on stderr (an unexpected exception in the data
  set's code leaves its traceback in <out>/{ERROR_LOG})
"""
