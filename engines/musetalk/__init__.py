"""MuseTalk 1.5: one UNet step at t=0 in SD-VAE latent space, driven by Whisper-tiny features.

Rooms as every backend has them: ``weights`` (the official file layout and its loader),
``model`` (the PyTorch modules as published, used to export), ``export`` (ONNX and the
check against PyTorch), ``backend`` (the streaming glue, ONNX Runtime only), ``files`` (what
``doctor`` shows of the files, found or not). Besides:
``bisenet`` (the optional face parser's network, for export) and ``parsing`` (its blending mask,
numpy only), ``face`` (the crop and the FaceMesh mask), ``audio``, ``tiny`` (test checkpoints).
"""
