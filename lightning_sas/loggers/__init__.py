"""Publishing an audit to the Trainer's loggers in their native forms (TensorBoard, W&B, MLflow, CSV/directory)."""
