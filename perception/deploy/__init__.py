"""Deployment: ONNX export of a detector's dense part (:mod:`.dense_export`) and a runtime that runs the rest
around an onnxruntime session (:mod:`.runtime`)."""
