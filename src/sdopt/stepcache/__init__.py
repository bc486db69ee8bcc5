"""Step-feature caching (DeepCache, Ma et al. 2023): reuse the UNet's deep features between steps.

Adjacent denoising steps change the UNet's deep (low-resolution) features
little. Every N-th step runs the whole UNet and keeps the feature that enters
its last up block; the N-1 steps between run only the shallow branch — the
input conv, the first down block, the last up block, the output conv — on that
cached feature and their own fresh skip connections.

- ``unet.py``: the split UNet, as two modules sharing the UNet's weights —
  ``DeepUNet`` (the whole UNet, exactly Diffusers' computation, with the cached
  feature as a second output) and ``ShallowUNet`` (the shallow branch, with the
  feature as an input). Exporters trace these into two graphs (``unet`` with a
  ``deep_feature`` output, ``unet_shallow``), so caching runs on every backend,
  not only in PyTorch.
- ``schedule.py``: which steps run whole, from the interval.

The loop (runtime/pipeline.py) chooses per step; the interval is a request
option (``GenerateRequest.cache_interval``) whose default an artifact records
at export (``--deep-cache N``). It changes what is computed, so it is judged by
what the images show (the shapes model's adherence), not by PSNR alone.
"""
