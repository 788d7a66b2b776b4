"""The default CPU backend `mesh`: FaceMesh landmarks, an audio-to-mouth model, and a mesh warp
of the lower face with a synthesised mouth interior (render), blinks and head sway (idle)."""
