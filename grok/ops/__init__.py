"""Kernels and building blocks below the model: int8 matmuls, norms, RoPE, linear layers."""
