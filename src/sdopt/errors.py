"""The one error type users see.

Every problem caused by input (a path, a flag, a file on disk) is raised as an
``SdoptError`` whose message says what went wrong and what to do. The CLI
prints it on one line and exits non-zero; a traceback means a bug in sdopt.
A message that names an argument the caller gave spells it the caller's way (``argument``).
"""

import contextvars
from contextlib import contextmanager
from typing import Any, Iterator


class SdoptError(Exception):
    """An error caused by input, with a message meant for the user; ``field``, where one input is at fault,
    names it as sdopt's request calls it (an HTTP API answers with that field in its own words)."""

    exit_code = 2

    def __init__(self, message: str = "", field: str | None = None):
        super().__init__(message)
        self.field = field


class Terminated(KeyboardInterrupt):
    """SIGTERM, as the command line raises it (cli._exit_on_sigterm): a KeyboardInterrupt, so whatever cleans up after
    Ctrl-C cleans up after it, and told apart where the stop asked for ends 0 (sdopt serve, stopped while it loads)."""


class BrokenOutputError(SdoptError):
    """A generate call ran but produced no usable image (NaN latents, an all-black image)."""

    exit_code = 3


class MissingDependencyError(SdoptError):
    """An optional backend library is not installed."""

    def __init__(self, module: str, extra: str):
        super().__init__(
            f"this needs the Python package '{module}', which is not installed: "
            f"pip install 'sdopt[{extra}]'"
        )
        self.module = module
        self.extra = extra


# Whether the sdopt command is the caller (cli.main sets it around a command's run): its errors name the flags typed
# (--num-images 2), a Python program's the keyword arguments it passed (num_images=2), as a flag means nothing there.
_COMMAND_LINE: contextvars.ContextVar[bool] = contextvars.ContextVar("sdopt_command_line", default=False)
_UNSET: Any = object()


@contextmanager
def _set_within(variable: contextvars.ContextVar, value: Any) -> Iterator[None]:
    """``variable`` is ``value`` within the block, and what it was after it."""
    token = variable.set(value)
    try:
        yield
    finally:
        variable.reset(token)


def command_line(on: bool = True):
    """Within it, ``argument`` names arguments as the command line's flags (``on``) or as Python's keywords."""
    return _set_within(_COMMAND_LINE, on)


def on_command_line() -> bool:
    """Whether the sdopt command is the caller (``command_line`` is on), for a message whose form differs beyond an
    argument's name: a LoRA is ``--lora FILE:SCALE`` there, ``loras={FILE: SCALE}`` in a Python GenerateRequest."""
    return _COMMAND_LINE.get()


# The field names of the HTTP API whose request is being checked (sdopt serve: AUTOMATIC1111's cfg_scale for the loop's
# guidance_scale), None elsewhere: a client is told of the fields it sent, not of the Python arguments they became.
_API_FIELDS: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("sdopt_api_fields", default=None)


def api_fields(names: dict[str, str]):
    """Within it, ``argument`` names arguments as an HTTP API's fields: ``names`` maps the loop's names to the API's
    (those it leaves out are the same in both)."""
    return _set_within(_API_FIELDS, names)


def in_api_request() -> bool:
    """Whether an HTTP API's request is being checked (``api_fields``), for a message whose advice is the server
    operator's: a load option (deep_cache, reshape) is no field a client can send, but a flag of sdopt serve."""
    return _API_FIELDS.get() is not None


def no_value() -> str:
    """How a message names an argument left unset: null to an HTTP API's client, which sends JSON (``api_fields``), None
    elsewhere ("or None (the artifact's default)" told a JSON client of a Python value it cannot send)."""
    return "null" if in_api_request() else "None"


def argument(name: str, value: Any = _UNSET, flag: str | None = None) -> str:
    """How a message names the argument ``name`` (a keyword of sdopt.load, a GenerateRequest field, an option of
    export or quantize), with ``value`` where one is given: as the flag on the command line (``--num-images 2``,
    ``--reshape`` for True; ``flag`` where the command line spells it otherwise than --NAME), as the field of the HTTP
    API whose request is checked (``denoising_strength=0.0``, ``api_fields``), as the keyword in Python
    (``num_images=2``)."""
    if (fields := _API_FIELDS.get()) is not None:
        field = fields.get(name, name)
        return field if value is _UNSET else f"{field}={as_json(value)}"
    if _COMMAND_LINE.get():
        flag = flag or "--" + name.replace("_", "-")
        return flag if value is _UNSET or value is True else f"{flag} {value}"
    return name if value is _UNSET else f"{name}={value!r}"


def as_json(value: Any) -> str:
    """A value as a JSON client wrote it (true, "euler", 0.5), Python's repr where JSON has no form for it."""
    import json

    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def did_you_mean(word: str, choices, quoted: bool = False) -> str:
    """" (did you mean NAME?)" naming the choice nearest a misspelt ``word``, or "" when none is near (difflib's)."""
    import difflib

    near = difflib.get_close_matches(word, list(choices), n=1)
    if not near:
        return ""
    return f" (did you mean {near[0]!r}?)" if quoted else f" (did you mean {near[0]}?)"


def with_article(name: str) -> str:
    """"a NAME" or "an NAME" by its first letter (a class name in a message: "an AutoencoderKL")."""
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def require(module: str, extra: str):
    """Import an optional dependency, or raise an error naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # only a missing package, not a broken one, becomes a user error
        if exc.name and exc.name.split(".")[0] == module.split(".")[0]:
            raise MissingDependencyError(module, extra) from exc
        raise


def require_installed(module: str, extra: str) -> None:
    """``require``'s error where ``module`` is not installed, found without importing it (peft's import takes seconds):
    for a check before a slow load, where the import itself comes later."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(module, extra)


def exception_line(exc: BaseException, most: int = 300, last: bool = False, skip: tuple[str, ...] = ()) -> str:
    """The line of a library's exception that says what is wrong, for an SdoptError's message: its first non-empty line
    (``last``: its last, where the library puts the cause at the end, as Ray's wrapped tracebacks), passing over lines
    that start with ``skip`` (OpenVINO's C++ source locations), cut at a word when longer than ``most``; the exception's
    type name when it says nothing."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    told = [line for line in lines if not line.startswith(skip)] or lines
    line = (told[-1] if last else told[0]) if told else type(exc).__name__
    return line if len(line) <= most else line[:most].rsplit(" ", 1)[0] + " ..."


# What libraries say when the process cannot get memory: threading's, the dynamic loader's (a library's segments cannot
# be mapped: importing torch or safetensors under ulimit -v 1.6 GB), OpenVINO's CPU plugin ("[CPU] Reorder node with
# name '...' can't alloc" in an infer under ulimit -v 2 GB), the C library's ENOMEM and C++'s.
OUT_OF_MEMORY_WORDS = ("can't start new thread", "failed to map segment from shared object", "can't alloc",
                       "Cannot allocate memory", "std::bad_alloc")


def short_of_memory_or_threads(exc: BaseException) -> bool:
    """Whether ``exc`` is this process failing to get memory or a thread (ulimit -v, ulimit -u, a container's limit),
    not a fault of what it was reading: a MemoryError, or a library saying so (OUT_OF_MEMORY_WORDS; a thread's stack is
    address space too: under ulimit -v 1.2 GB, loading the tiny model's text encoder failed to start one)."""
    return isinstance(exc, MemoryError) or any(words in str(exc) for words in OUT_OF_MEMORY_WORDS)
