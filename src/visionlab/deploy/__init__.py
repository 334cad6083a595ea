"""Deployment building blocks on plain nn.Modules, files and numpy: export (ONNX, int8, TorchScript), runtimes,
latency measurement, and the video stream pieces. Nothing is imported here, so onnx/onnxruntime stay optional."""
