"""Architectures of the zoo's models, as plain config dicts.

Written out in code rather than read from the hub, so that a checkpoint can be
built with no network and the architecture is reviewable here. Plain dicts keep
this module free of torch: the CLI lists the zoo without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# SD 1.5's scheduler_config.json. Both models share it, so a pipeline built on
# the tiny model runs the same timestep schedule as the real one.
SD15_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "trained_betas": None,
}


@dataclass(frozen=True)
class ZooModel:
    """A synthetic Stable Diffusion checkpoint: real architecture, random weights.

    ``text_encoder`` leaves out the token ids (and, for the tiny model, the
    vocabulary size): the writer fills them in from the locally built tokenizer,
    so the two can never disagree.
    """

    name: str
    description: str
    unet: dict
    vae: dict
    text_encoder: dict
    scheduler: dict = field(default_factory=lambda: dict(SD15_SCHEDULER))
    # SDXL: the second text encoder (a CLIPTextModelWithProjection; its pooled, projected output
    # conditions the UNet) and what model_index.json says of the pipeline.
    text_encoder_2: dict | None = None
    pipeline_class: str = "StableDiffusionPipeline"
    # Trained weights shipped with sdopt (package data under sdopt/zoo/weights/NAME), written
    # instead of the random initial ones; None: a random-weight model.
    trained: str | None = None


TINY = ZooModel(
    name="tiny",
    description="SD-1-shaped toy (a few MB): same interfaces and latent layout as SD 1.5, for tests",
    unet={
        "sample_size": 8,  # 8 * 8 (the VAE factor) = 64-pixel images by default
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [32, 64],
        "layers_per_block": 2,
        "attention_head_dim": 8,
        "cross_attention_dim": 32,
        "norm_num_groups": 32,
    },
    vae={
        "sample_size": 64,
        "in_channels": 3,
        "out_channels": 3,
        # Four blocks, as in SD, so that the image-to-latent factor is 8 and
        # every shape downstream of the VAE matches the real model's.
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [16, 32, 32, 32],
        "layers_per_block": 1,
        "norm_num_groups": 16,  # must divide every entry of block_out_channels
        "latent_channels": 4,
        "scaling_factor": 0.18215,
    },
    text_encoder={
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 5,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "projection_dim": 32,
        "layer_norm_eps": 1e-5,
    },
)


def _variant(model: ZooModel, suffix: str, description: str, pipeline_class: str, unet: dict, scheduler: dict | None = None) -> ZooModel:
    """``model`` with another UNet config (and scheduler), every config a copy of its own."""
    return replace(
        model,
        name=f"{model.name}-{suffix}",
        description=f"{model.name} {description}",
        unet={**model.unet, **unet},
        vae=dict(model.vae),
        text_encoder=dict(model.text_encoder),
        text_encoder_2=None if model.text_encoder_2 is None else dict(model.text_encoder_2),
        scheduler=dict(model.scheduler if scheduler is None else scheduler),
        pipeline_class=pipeline_class,
    )


def inpainting_variant(model: ZooModel, pipeline_class: str) -> ZooModel:
    """``model`` laid out as an inpainting checkpoint (stable-diffusion-inpainting's): its UNet reads 9 channels
    each step, the latents, the mask and the masked image's latents; model_index.json names ``pipeline_class``."""
    return _variant(model, "inpaint", "with a 9-channel inpainting UNet (latents, mask, masked image), for tests", pipeline_class,
                    {"in_channels": 9})


# LCM_Dreamshaper_v7's scheduler_config.json (SD 1.5's noise schedule).
LCM_SCHEDULER = {
    "_class_name": "LCMScheduler",
    **{k: v for k, v in SD15_SCHEDULER.items() if k != "skip_prk_steps"},
    "original_inference_steps": 50,
    "timestep_spacing": "leading",
    "set_alpha_to_one": True,
    "clip_sample": False,
}


def lcm_variant(model: ZooModel, pipeline_class: str) -> ZooModel:
    """``model`` as a latent consistency model (LCM_Dreamshaper_v7's layout): its UNet embeds the guidance scale
    (``time_cond_proj_dim``, sdopt.runtime.embedded_guidance) and it samples with LCMScheduler in a few steps."""
    return _variant(model, "lcm", "as a latent consistency model (guidance embedded in the UNet, LCMScheduler), for tests", pipeline_class,
                    {"time_cond_proj_dim": 256}, LCM_SCHEDULER)


TINY_INPAINT = inpainting_variant(TINY, "StableDiffusionInpaintPipeline")
TINY_LCM = lcm_variant(TINY, "LatentConsistencyModelPipeline")

SD15 = ZooModel(
    name="sd15",
    description="Stable Diffusion 1.5 architecture (~860M-parameter UNet, CLIP ViT-L/14 text encoder), random weights",
    unet={
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "center_input_sample": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": [
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ],
        "up_block_types": [
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ],
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "cross_attention_dim": 768,
        # Diffusers' historical name: in SD 1 this is the number of heads (8).
        "attention_head_dim": 8,
    },
    vae={
        "sample_size": 512,
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "latent_channels": 4,
        "scaling_factor": 0.18215,
    },
    text_encoder={
        # CLIP ViT-L/14's text tower. The real vocabulary size is kept (our
        # tokenizer uses only its first ids) so the parameter count is the real one.
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "projection_dim": 768,
        "layer_norm_eps": 1e-5,
    },
)

SHAPES = ZooModel(
    name="shapes",
    description="SD-1-shaped model trained on sdopt's shapes dataset (64x64, a few MB): draws the coloured shapes its caption asks for",
    unet={
        "sample_size": 16,  # 16 * 4 (the VAE factor) = 64-pixel images
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [32, 64, 64],  # ~1.5M parameters: trainable in the hour the issue allows on 2 cores
        "layers_per_block": 1,
        # Diffusers' legacy name for the number of heads: 2 heads of 16 and 32 channels. With 8
        # (heads of 4 and 8 channels) a training step took 0.62 s, against 0.39 s with 2 (2 cores).
        "attention_head_dim": 2,
        "cross_attention_dim": 64,
        "norm_num_groups": 16,
    },
    vae={
        "sample_size": 64,
        "in_channels": 3,
        "out_channels": 3,
        # Three blocks: factor 4, so a 16-22 px shape spans 4-6 latent pixels (at SD's 8 it
        # would be 2-3, too few for a triangle to differ from a diamond).
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "block_out_channels": [16, 32, 64],
        "layers_per_block": 1,
        "norm_num_groups": 16,
        "latent_channels": 4,
        "scaling_factor": 1.0,  # set by training from the latents' spread
    },
    text_encoder={
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "projection_dim": 64,
        "layer_norm_eps": 1e-5,
    },
    # Zero terminal SNR and v-prediction (Lin et al. 2024, "Common Diffusion Noise Schedules and
    # Sample Steps are Flawed"), as SD 2.x's v-models predict. SD 1.5's schedule keeps 7% of the
    # picture at its last timestep; at 16x16 latents that is enough to see where the shapes are,
    # so a model trained on it learned position from the noisy latents instead of the caption and
    # placed shapes by habit when sampling from pure noise (position right 16% of the time; 85%
    # with this schedule after 1000 steps; docs/shapes.md).
    scheduler={
        **SD15_SCHEDULER,
        "_class_name": "EulerDiscreteScheduler",
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
        "timestep_spacing": "trailing",
    },
    trained="shapes",
)

# SD 2.x (stabilityai/stable-diffusion-2's layout, at toy size): an OpenCLIP-style text encoder
# (gelu), linear-projection attention with per-block head widths, and v-prediction with DDIM.
SD2_TINY = ZooModel(
    name="sd2-tiny",
    description="SD-2-shaped toy (a few MB): v-prediction, linear-projection attention, OpenCLIP-style text encoder, for tests",
    unet={
        **TINY.unet,
        "attention_head_dim": [2, 4],  # SD 2's per-block list ([5, 10, 20, 20]), at this size
        "use_linear_projection": True,
        "upcast_attention": True,  # as the 768-v model
    },
    vae=dict(TINY.vae),
    text_encoder={**TINY.text_encoder, "hidden_act": "gelu"},
    scheduler={**SD15_SCHEDULER, "_class_name": "DDIMScheduler", "prediction_type": "v_prediction"},
)

# SDXL base 1.0's scheduler_config.json.
SDXL_SCHEDULER = {
    **SD15_SCHEDULER,
    "_class_name": "EulerDiscreteScheduler",
    "interpolation_type": "linear",
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}

SDXL_TINY = ZooModel(
    name="sdxl-tiny",
    description="SDXL-shaped toy (a few MB): two text encoders, pooled embedding and time ids, for tests",
    unet={
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [32, 64],
        "layers_per_block": 2,
        "attention_head_dim": [2, 4],
        "transformer_layers_per_block": [1, 2],
        "use_linear_projection": True,
        "cross_attention_dim": 64,  # the two text encoders' hidden widths, concatenated (32 + 32)
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 6 * 8 + 32,  # six time ids + text_encoder_2's projection
        "norm_num_groups": 32,
    },
    vae={**TINY.vae, "scaling_factor": 0.13025, "force_upcast": True},
    text_encoder={**TINY.text_encoder},
    text_encoder_2={**TINY.text_encoder, "hidden_act": "gelu"},
    scheduler=dict(SDXL_SCHEDULER),
    pipeline_class="StableDiffusionXLPipeline",
)

SDXL_TINY_INPAINT = inpainting_variant(SDXL_TINY, "StableDiffusionXLInpaintPipeline")
SDXL_TINY_LCM = lcm_variant(SDXL_TINY, "StableDiffusionXLPipeline")  # as latent-consistency/lcm-sdxl: an LCM UNet in SDXL's pipeline

SDXL = ZooModel(
    name="sdxl",
    description="Stable Diffusion XL base 1.0 architecture (~2.6B-parameter UNet, CLIP ViT-L + OpenCLIP bigG text encoders), random weights; ~13 GB fp32",
    unet={
        "sample_size": 128,
        "in_channels": 4,
        "out_channels": 4,
        "act_fn": "silu",
        "center_input_sample": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [320, 640, 1280],
        "layers_per_block": 2,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "attention_head_dim": [5, 10, 20],
        "transformer_layers_per_block": [1, 2, 10],
        "use_linear_projection": True,
        "cross_attention_dim": 2048,
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
    },
    vae={**SD15.vae, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
    text_encoder={**SD15.text_encoder},
    text_encoder_2={
        # OpenCLIP ViT-bigG/14's text tower.
        "vocab_size": 49408,
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 20,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "projection_dim": 1280,
        "layer_norm_eps": 1e-5,
    },
    scheduler=dict(SDXL_SCHEDULER),
    pipeline_class="StableDiffusionXLPipeline",
)

MODELS: dict[str, ZooModel] = {model.name: model for model in (TINY, TINY_INPAINT, TINY_LCM, SD15, SHAPES, SD2_TINY, SDXL_TINY, SDXL_TINY_INPAINT, SDXL_TINY_LCM, SDXL)}
