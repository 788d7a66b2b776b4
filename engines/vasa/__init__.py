"""The `vasa` backend: Ditto (antgroup/ditto-talkinghead) motion diffusion driving LivePortrait renderer networks."""
