"""Training: the Detectron2 trainer, launch, safe checkpoints, optimizers."""
