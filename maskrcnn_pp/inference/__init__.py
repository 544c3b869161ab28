"""Using a trained model: export to TorchScript / ONNX (``export``)."""
