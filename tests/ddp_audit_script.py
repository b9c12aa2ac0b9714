"""Run by test_callback_ddp.py: one epoch of 2-process CPU DDP (gloo) with the audit callback."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.loggers import TensorBoardLogger

sys.path.insert(0, str(Path(__file__).parent))

from lit_models import LitClassifier, corner_dataset, loaders

from lightning_sas import GradCAM, SaS, SASAuditCallback


class CollectiveForward(LitClassifier):
    """A forward with a collective inside, as under FSDP or tensor parallelism: every rank must
    make the same forward calls, or the run deadlocks."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if dist.is_initialized():
            dist.all_reduce(torch.zeros(1))
        return super().forward(images)


def main(out: Path, mode: str) -> None:
    L.seed_everything(0, verbose=False)
    if mode == "collective":
        # Fewer probes than ranks, and a chunk size that differs per rank unless agreed.
        rank = int(os.environ.get("LOCAL_RANK", "0"))
        methods = [SaS(iterations=2, num_masks=4, max_batch=2 + rank), GradCAM()]
        callback = SASAuditCallback(probe=1, methods=methods, on_error="raise")
        model = CollectiveForward()
    else:
        callback = SASAuditCallback(probe=5, methods=[SaS(iterations=3, num_masks=4), GradCAM()])
        model = LitClassifier()
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
    trainer.fit(model, *loaders(corner_dataset()))
    if trainer.global_rank == 0:
        torch.save(model.state_dict(), out / "final.pt")
        (out / "manifest.json").write_text(json.dumps(callback.manifest))
    (out / f"rank{trainer.global_rank}_audited.json").write_text(json.dumps(callback.audited_epochs))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "shards")
