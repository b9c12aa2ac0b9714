"""Run by test_callback_ddp.py: one epoch of 2-process CPU DDP (gloo) with the audit callback."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

sys.path.insert(0, str(Path(__file__).parent))

from lightning_sas import GradCAM, SASAuditCallback, SaS  # noqa: E402
from lit_models import LitClassifier, corner_dataset, loaders  # noqa: E402


def main(out: Path) -> None:
    L.seed_everything(0, verbose=False)
    callback = SASAuditCallback(probe=5, methods=[SaS(iterations=3, num_masks=4), GradCAM()])
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        logger=TensorBoardLogger(out, name="tb", version=0),
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    model = LitClassifier()
    trainer.fit(model, *loaders(corner_dataset()))
    if trainer.global_rank == 0:
        torch.save(model.state_dict(), out / "final.pt")
        (out / "manifest.json").write_text(json.dumps(callback.manifest))
    (out / f"rank{trainer.global_rank}_audited.json").write_text(json.dumps(callback.audited_epochs))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
