"""Hydra config groups, shipped inside the package so installed wheels find them."""
