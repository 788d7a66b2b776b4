"""Lip-sync backends: the contract (base), the registry, and one package per backend."""
