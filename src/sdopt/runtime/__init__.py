"""Running artifacts: the one denoising loop (pipeline.py), backends' component executors, load()."""
