"""The control plane: live registry, router, placement reconciler."""
