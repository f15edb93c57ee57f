"""Dual-scale any-to-any transformer: configs, masking, token-store loader, training and generation."""
