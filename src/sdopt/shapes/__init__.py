"""Procedural shapes: a tiny captioned dataset (``scenes``) and a classical-vision judge (``judge``).

Pure numpy + Pillow; importing either submodule never imports torch.
"""
