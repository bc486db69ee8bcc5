"""What a server allows and whom it lets in: one dataclass, filled by cli.py."""

from __future__ import annotations

from dataclasses import dataclass

from sdopt.errors import SdoptError


DEFAULT_IMAGE_BYTES = 16 * 2**20  # one decoded input image, where sdopt serve --max-image-bytes does not say


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 7860
    api_key: str | None = None  # Bearer token; when set, every endpoint needs it but those auth.require_auth names
    api_auth: str | None = None  # "USER:PASS" for HTTP Basic, as AUTOMATIC1111's --api-auth
    max_queue: int = 64  # jobs waiting (not running); one more gets 429
    max_batch: int = 4  # images in one generate call
    job_timeout: float = 600.0  # seconds from submission to the last image; inf: none (a job's deadline is then inf)
    max_pixels: int = 1024 * 1024  # width x height of one image
    max_steps: int = 150
    max_images: int = 8  # images in one request (n, batch_size x n_iter)
    max_body_bytes: int = 32 * 2**20  # a request body (base64 images included)
    max_image_bytes: int = DEFAULT_IMAGE_BYTES  # one decoded input image
    name: str | None = None  # the model name the APIs report; default: the artifact folder's name
    lora_dir: str | None = None  # LoRAs a prompt may name as <lora:NAME:WEIGHT> (serve/loras.py)
    embeddings_dir: str | None = None  # textual inversion embeddings prompts may name by word (sdopt.embeddings)
    # Names besides loopback that requests may reach a server by (their Host, and Origin where a browser sends one): see
    # serve/hosts.py. A server bound to loopback checks always, one bound beyond it only where some are given; "*": any.
    allowed_hosts: tuple[str, ...] = ()
    image_dir: str | None = None  # OpenAI's response_format=url images and their links' key, kept across restarts (serve/image_links.py)
    # What a request that does not say gets: every OpenAI request (its API has no such fields; sdopt_steps and
    # sdopt_guidance_scale override), a native one without them, the page. AUTOMATIC1111's API keeps its own
    # defaults (50 steps, cfg_scale 7), which its clients expect and mostly send.
    # None: the model's own (sdopt.runtime.request_defaults: what its artifact records, 4 at 8.5 for an LCM UNet,
    # else 20 at 7.5), filled in when the app is built (serve/submission.py: with_model_defaults).
    steps: int | None = None
    guidance_scale: float | None = None
    scheduler: str | None = None  # None: the model's own

    def __post_init__(self):
        for field_name in ("max_queue", "max_batch", "max_pixels", "max_steps", "max_images", "max_body_bytes", "max_image_bytes"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or value < 1:
                raise SdoptError(f"--{field_name.replace('_', '-')} {value!r}: must be a positive integer")
        if self.max_image_bytes != DEFAULT_IMAGE_BYTES and self.max_image_bytes > self.max_body_bytes:
            # Here, not in cli.py alone: a ServeSettings built in Python took it silently. Such a limit can never be reached:
            # a JSON request carries an image as base64 (4/3 its size), a form upload (OpenAI's edits) as it is, inside a
            # body of at most max_body_bytes, which refused the larger images with 413 whatever this said. The default is
            # not held against a smaller body (a server of small requests need not lower both; dataclasses.replace passes
            # it on as if given).
            raise SdoptError(f"--max-image-bytes {self.max_image_bytes} cannot be reached: a request body is at most --max-body-bytes "
                             f"{self.max_body_bytes}, and an image comes inside one (a JSON request's as base64, 4/3 its size): pass "
                             f"--max-body-bytes {-(-self.max_image_bytes * 4 // 3) + 2**20} or more with it")
        # socket.bind raises OverflowError (no OSError, so no "port in use" message) for a port past 65535. 0 asks the
        # system for any free port (embedders and the tests build apps so).
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise SdoptError(f"--port {self.port!r}: must be a port number from 1 to 65535, or 0 for any free one (default 7860, as AUTOMATIC1111)")
        from sdopt.request import MAX_GUIDANCE, is_valid_guidance, is_valid_steps
        from sdopt.runtime.schedulers import check_scheduler

        if self.steps is not None and not is_valid_steps(self.steps, self.max_steps):
            raise SdoptError(f"--steps {self.steps!r}: must be an integer from 1 to --max-steps ({self.max_steps})")
        if self.guidance_scale is not None and not is_valid_guidance(self.guidance_scale):
            raise SdoptError(f"--guidance {self.guidance_scale!r}: must be a number from 0 to {MAX_GUIDANCE:g} (1 or less turns guidance off)")
        check_scheduler(self.scheduler)
        if not self.job_timeout > 0:
            raise SdoptError(f"--job-timeout {self.job_timeout!r}: must be a positive number of seconds, or inf for no timeout")
        if self.api_auth is not None and ":" not in self.api_auth:
            raise SdoptError("--api-auth must be USER:PASS (as AUTOMATIC1111's --api-auth)")
        if self.lora_dir is not None:
            from pathlib import Path

            if not Path(self.lora_dir).is_dir():
                raise SdoptError(f"--lora-dir {self.lora_dir}: not a folder; give the folder that holds your LoRA .safetensors files")
            from sdopt.errors import require_installed

            require_installed("peft", "lora")  # said at start, not to the first client whose prompt names a LoRA
        if self.embeddings_dir is not None:
            from pathlib import Path

            if not Path(self.embeddings_dir).is_dir():
                raise SdoptError(f"--embeddings-dir {self.embeddings_dir}: not a folder; give the folder that holds your embedding .safetensors files")
        if self.image_dir is not None:
            from pathlib import Path

            if Path(self.image_dir).exists() and not Path(self.image_dir).is_dir():
                raise SdoptError(f"--image-dir {self.image_dir}: not a folder; give a folder (made if absent) for the linked images")
        from sdopt.serve.hosts import check_allowed_hosts

        check_allowed_hosts(self.allowed_hosts)
        if self.api_key is not None and not self.api_key.strip():
            raise SdoptError("--api-key is empty: give a key, or leave the option out")

    @property
    def max_input_pixels(self) -> int:
        """Pixels of an init image or mask: larger than the output allows, since the loop resizes it."""
        return self.max_pixels * 16

    @property
    def basic_credentials(self) -> tuple[str, str] | None:
        if self.api_auth is None:
            return None
        user, _, password = self.api_auth.partition(":")
        return user, password

    @property
    def needs_auth(self) -> bool:
        return self.api_key is not None or self.api_auth is not None

    @property
    def exposed(self) -> bool:
        """Bound to something other than loopback: reachable from other machines. All of 127.0.0.0/8 is loopback, as the
        Host guard admits (serve/hosts.py): --host 127.0.0.2 is this machine only, so it gets the guard and no warning."""
        from sdopt.serve.hosts import is_loopback

        return not is_loopback(self.host.lower())

    @property
    def host_check(self) -> frozenset[str] | None:
        """The names besides loopback a request's Host and Origin may name; None: any (serve/hosts.py)."""
        from sdopt.serve.hosts import ANY_HOST, host_name

        if ANY_HOST in self.allowed_hosts or (self.exposed and not self.allowed_hosts):
            return None
        return frozenset(host_name(name) for name in self.allowed_hosts)  # read as a Host header is: [fd00::5] is fd00::5
