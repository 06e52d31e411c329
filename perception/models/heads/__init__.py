"""LiDAR detector building blocks (explicit constructors, typed inputs and outputs)."""
