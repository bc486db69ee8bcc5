"""What the process's environment made fail, said in one line: memory, threads, file-size and disk limits, a working
folder gone, and the interpreter's own settings (-W error, -OO). Each turned a library's traceback, which never named
the cause, into a line that says what to do; anything not recognised here is a bug and keeps its traceback."""

from __future__ import annotations

import sys

from sdopt.errors import exception_line, short_of_memory_or_threads

CPP_LOCATIONS = ("Exception from", "Check '")  # OpenVINO's lines before what it says

NO_CWD = ("the current folder no longer exists (deleted while the shell was in it): cd to a folder that does; "
          "without one, relative paths mean nothing and the libraries sdopt loads fail (transformers' import, oneMKL's)")


def failure(exc: BaseException) -> str | None:
    """The line for an exception the environment caused, or None where it is not one of those."""
    from sdopt.write_failures import DISK_FULL, file_too_large, out_of_space, past_file_size_limit

    if isinstance(exc, MemoryError):  # a bare MemoryError traceback (ulimit -v met while importing torch or loading) said nothing
        return (f"out of memory: this process could not get the memory it asked for{_memory_limit()}; close other programs, "
                "or ask for less (a smaller model, --height/--width or --num-images)")
    if short_of_memory_or_threads(exc):  # "can't start new thread": a RuntimeError traceback, or blamed on the files read
        return (f"{exception_line(exc, skip=CPP_LOCATIONS)}: this process could not get the memory or threads it asked for{_memory_limit()}; "
                "close other programs, or ask for less (ulimit -u limits threads too)")
    if isinstance(exc, Warning):  # only -W error / PYTHONWARNINGS=error raise one: a library's deprecation, a traceback
        return _warning_raised(exc)
    if stripped := _docstrings_stripped(exc):
        return stripped
    if past_file_size_limit(exc):  # a file written outside an artifact folder (a bench report's): one line as well
        what, advice = file_too_large()
        return f"{exception_line(exc)}: {what}; {advice}"
    if out_of_space(exc):  # a file written outside an artifact folder (a LoRA, a bench report): one line too
        return f"the disk is full ({exception_line(exc)}): {DISK_FULL}"
    return None


def _warning_raised(exc: Warning) -> str:
    """A warning that the interpreter's filters made an exception (python -W error, PYTHONWARNINGS=error): under them the
    Euler scheduler's set_timesteps (numpy's DeprecationWarning about torch's __array__) ended generate --scheduler
    euler in a traceback that never named the setting. Said with where it was raised, so it can be filtered."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (raised at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    name = type(exc).__name__
    return (f"{name}: {exception_line(exc)}{where}: a warning turned into an error by python -W error or PYTHONWARNINGS=error; "
            f"let warnings be warnings (PYTHONWARNINGS=default), or leave this one out (-W ignore::{name})")


def cwd_exists() -> bool:
    """False where the working folder was removed under the process: transformers' import resolved Path("src") and
    raised FileNotFoundError, torch's oneMKL ended the process ("Intel oneMKL FATAL ERROR: Cannot load libtorch_cpu.so"),
    whatever absolute paths the command was given."""
    import os

    try:
        os.getcwd()
    except FileNotFoundError:
        return False
    return True


def _docstrings_stripped(exc: BaseException) -> str | None:
    """What to do where docstrings are stripped (python -OO, PYTHONOPTIMIZE=2) and that is what failed; else None.
    transformers builds its model classes' documentation from their docstrings and raises at import without them
    ("No `Args` or `Parameters` section is found in the docstring of ..."), so every command that reaches a PyTorch
    model (init-model, export, quantize, the torch backend) ended in a 40-line traceback; ONNX and OpenVINO artifacts
    run. -O (PYTHONOPTIMIZE=1) keeps docstrings."""
    if sys.flags.optimize < 2:
        return None
    seen: BaseException | None = exc
    while seen is not None:
        if "docstring" in str(seen):
            return ("transformers cannot import its models with docstrings stripped (python -OO or PYTHONOPTIMIZE=2): "
                    "run sdopt without them (-O, PYTHONOPTIMIZE=1, keeps docstrings)")
        seen = seen.__cause__ or seen.__context__
    return None


def _memory_limit() -> str:
    """" (its address space is limited to N MiB: ulimit -v)" where the process runs under such a limit, else ""."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    except (ImportError, OSError, ValueError):  # no resource module (Windows)
        return ""
    if limit == resource.RLIM_INFINITY:
        return ""
    return f" (its address space is limited to {limit // 2**20:,} MiB: raise the limit, ulimit -v)"
