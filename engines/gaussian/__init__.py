"""The `gaussian` backend: a 3D Gaussian head on a FaceMesh rig, orthographic camera."""
