"""The default CPU backend `mesh`: FaceMesh landmarks, an audio-to-mouth model, and a mesh warp
of the face (the renderer: prepare, targets, warp, render) with a synthesised mouth interior
(interior), and the whole head turned, brows lifted and eyes blinked as the voice-driven
head-motion model says (head; the model is ``engines/head_motion``)."""
