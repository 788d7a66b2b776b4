"""The default CPU backend `mesh`: FaceMesh landmarks, an audio-to-mouth model, and a mesh warp
of the lower face (the renderer: prepare, targets, warp, render) with a synthesised mouth interior
(interior), blinks and head sway (idle)."""
