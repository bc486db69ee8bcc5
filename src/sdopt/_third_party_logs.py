"""Drop known-harmless warnings that third-party libraries log on every import.

With torchao 0.18 installed (the quant extra), importing diffusers imports torchao,
which logs "Failed to load .../_C_*.so" for its CUDA-only kernels on a CPU build
of torch, makes torch log two "Enum subclass ... register_constant() is
deprecated" warnings, and then diffusers logs "Unable to import `torchao` Tensor
objects". On a CPU with AVX-512-BF16, importing bitsandbytes logs that it
could not fetch a CPU kernel from the Hugging Face hub through the ``kernels``
package: sdopt never downloads at run time (``_offline`` hides
``kernels`` from it), and bitsandbytes then uses the kernel it ships; where a
user allows the fetch and the hub is offline, ``kernels`` first logs that it
skipped the publisher check for that repository. transformers 5.25 logs, once per class,
that an image processor "requires torchvision" and falls back to its PIL
version whenever diffusers' pipelines are imported: sdopt uses no image
processor, and torchvision would pull a second torch build. It also logs, when an
exporter's tracing touches a text encoder's ``loss_function``, that the config's
``loss_type=None`` is unrecognized: sdopt computes no loss. diffusers logs, when
a scheduler is built from a checkpoint's config for another class than its own
(``--scheduler tcd`` on SD 1.5's PNDM config), that keys the other class does
not take are in "your scheduler_config.json": they are the checkpoint's own
scheduler's, and the file is fine. A tokenizer logs that a prompt's tokens are more than
the text encoder's 77 when sdopt counts them (it says itself what it reads of a long prompt,
and in emphasis mode encodes it in chunks). diffusers warns on every ``to(dtype)`` of a model that
"modules ... should be kept in float32: []", the list empty (its check is ``[] is not None``), when
a torchao artifact is loaded in bf16 or fp16 (sdopt casts its float parameters after loading the
quantized weights): no module is kept in fp32, and the advice to use ``torch_dtype`` is not the
user's to follow; a non-empty list still shows. With a CUDA build of torch (what pip takes from PyPI on Linux, as on
any Python but 3.11 on this project's machines) on a machine with a CUDA toolkit and no GPU, importing optimum-quanto
(every quanto command) makes torch's C++-extension builder log "No CUDA runtime is found, using CUDA_HOME=...": sdopt
builds only quanto's CPU kernel, and a command that asks for CUDA says itself that there is no device. Most of these appear on every sdopt command;
none says anything about the user's work. Only these
messages are filtered, by logger and a fragment of their text; every other warning
from these loggers still shows. Uses only the standard library: ``import sdopt``
stays free of torch.
"""

from __future__ import annotations

import logging

_KNOWN_NOISE = {
    "torchao": ("Failed to load ",),
    "torch.utils._pytree": ("%s is an Enum subclass and is now natively supported",),
    "diffusers.quantizers.torchao.torchao_quantizer": ("Unable to import `torchao` Tensor objects",),
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
    "kernels._internals.hf_hub": ("Skipping publisher trust check for 'kernels-community/",),
    "transformers.utils.import_utils": ("requires torchvision (not installed); falling back to ",),
    "transformers.modeling_utils": ("was set in the config but it is unrecognized. Using the default loss",),
    "diffusers.configuration_utils": ("but are not expected and will be ignored. Please verify your scheduler_config.json",),
    "diffusers.models.modeling_utils": ("that should be kept in float32: []. Casting directly with `to()`",),
    "transformers.tokenization_utils_base": ("Token indices sequence length is longer than the specified maximum sequence length",),
    "torch.utils.cpp_extension": ("No CUDA runtime is found, using CUDA_HOME=",),
}


class _DropKnownNoise(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        # Matched in the unformatted message: some libraries log f-strings, others %-formats.
        return not (record.levelno == logging.WARNING and any(f in str(record.msg) for f in self.fragments))


def install() -> None:
    for name, fragments in _KNOWN_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownNoise) for f in logger.filters):
            logger.addFilter(_DropKnownNoise(fragments))
