"""The GPU path: fixed-shape decode steps replayed from CUDA graphs, compiled (fused) layers."""
