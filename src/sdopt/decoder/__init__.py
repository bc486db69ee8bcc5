"""A replaced VAE decoder: Diffusers' AutoencoderTiny (TAESD's architecture) in the full decoder's place.

- ``tiny.py``: the tiny decoder behind the full decoder's contract (the loop and
  every exporter and backend are unchanged), the checks that one fits a model,
  and the record the manifest keeps of the replacement.
- ``distill.py``: ``sdopt distill-decoder``, training one against a model's own
  decoder on latents the model produces.
- ``probe.py``: how close a replacement decodes to the full decoder, measured
  the same way at distillation and at export.

This changes what is computed (unlike export or quantization), so it is judged
by what the images show (the shapes model's adherence), not by PSNR alone.
"""
