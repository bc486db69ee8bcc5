"""The sdopt command line. Argument parsing only: every command is a thin call into a package.

One module per group of commands, each with its handlers and the ``add_*`` functions that declare
their flags: ``models.py`` (init-model, init-lora, train-shapes, distill-decoder), ``artifacts.py``
(inspect, clean, export, quantize), ``generating.py`` (generate), ``measure.py`` (bench, optimize,
gate), ``serving.py`` (serve); ``common.py`` what several of them parse alike; ``environment.py`` the
one-line errors for what the process's environment made fail (memory, limits, the interpreter's settings).

Errors caused by input are SdoptError: printed on one line, exit status 2
(3 when a generation ran but gave no usable image; the gate's own codes: 0/1/2).
"""

from __future__ import annotations

import argparse
import codecs
import sys
import warnings
from pathlib import Path

from sdopt import __version__
from sdopt.cli import artifacts, environment, generating, measure, models, serving
from sdopt.errors import SdoptError, command_line, did_you_mean

# In the order `sdopt --help` lists them.
COMMANDS = (
    models.add_init_model, models.add_init_lora, models.add_init_embedding, models.add_train_shapes, models.add_distill_decoder,
    artifacts.add_inspect, artifacts.add_clean, artifacts.add_export, artifacts.add_quantize,
    measure.add_bench, serving.add_serve, measure.add_optimize, measure.add_gate, generating.add_generate,
)


class Parser(argparse.ArgumentParser):
    """argparse's parser (every command's too: add_subparsers makes them of this class) taking no abbreviations:
    --ste for --steps was taken, and would stop working, or change meaning, the day a flag shares its prefix. A flag no
    command has is said by the command's parser, with the nearest of its flags (Python 3.11 has no suggest_on_error)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            command = self.commands.get(getattr(parsed, "command", None), self)
            flags = [word.split("=", 1)[0] for word in unknown if word.startswith("--")]
            near = next((hint for flag in flags if (hint := did_you_mean(flag, command._option_string_actions))), "")
            command.error(f"unrecognized arguments: {' '.join(unknown)}{near or _optional_value_hint(args, unknown, command)}")
        return parsed

    def error(self, message):
        # argparse reads a value that starts with '-' as a flag: "-o -x.png", "-p -dark" said only "expected one
        # argument". After '=' it is always the value.
        if message.endswith(": expected one argument"):
            names = message.removeprefix("argument ").split(":", 1)[0].split("/")
            flag = next((name for name in names if name.startswith("--")), names[0])
            message += _dash_value_hint(flag)
        super().error(message)


def _dash_value_hint(flag: str) -> str:
    return f" (a value that starts with '-' is written {flag}=VALUE)"


def _optional_value_hint(args, unknown: list[str], command: argparse.ArgumentParser) -> str:
    """A flag whose value is optional (--compile, --deep-cache) took none before a word starting with '-', which was then
    'unrecognized' with no word of why: the hint Parser.error gives a flag that needs its value."""
    argv = list(sys.argv[1:] if args is None else args)
    for word in (w for w in unknown if not w.startswith("--")):  # --bogus is a mistyped flag, not a value
        at = argv.index(word) if word in argv else 0
        action = command._option_string_actions.get(argv[at - 1]) if at else None
        if action is not None and action.nargs == "?":
            return _dash_value_hint(argv[at - 1])
    return ""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="sdopt", description="Export, quantize, run and benchmark Stable Diffusion models.")
    parser.add_argument("--version", action="version", version=f"sdopt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    parser.commands = sub.choices  # name -> its parser: an unknown flag is said by its command (Parser.parse_args)
    return parser


def _exit_on_sigterm() -> None:
    """Turn SIGTERM into an exception, so a terminated export still removes its temporary folder."""
    import signal

    from sdopt.errors import Terminated

    def handler(signum, frame):
        raise Terminated

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (sdopt.cli.main called from a worker): leave it
        pass


_PACKAGE_DIR = Path(__file__).resolve().parents[1]
_library_format = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings meant for users (bf16 emulated, bf16 asked but fp32 runs) read like our errors; a
    library's own (a SyntaxWarning in torchao's source, say) keeps its file and line, so it is not
    mistaken for sdopt's."""
    if Path(filename).resolve().is_relative_to(_PACKAGE_DIR):
        return f"sdopt: warning: {message}\n"
    return _library_format(message, category, filename, lineno, line)


def _path_bytes_else_backslash(exc: UnicodeError) -> tuple[str | bytes, int]:
    """stdout's encoding errors: a byte that came undecoded in an argument (a surrogate, under LC_ALL=C with PYTHONUTF8=0)
    goes out as that byte; anything else as a backslash escape. Backslash escapes alone printed `generate -o café/x.png`'s
    output as caf\\udcc3\\udca9/x.png, a path no script reading stdout could open."""
    at = exc.start
    if isinstance(exc, UnicodeEncodeError) and 0xDC80 <= ord(exc.object[at]) <= 0xDCFF:
        return bytes([ord(exc.object[at]) - 0xDC00]), at + 1
    return codecs.backslashreplace_errors(UnicodeEncodeError(exc.encoding, exc.object, at, at + 1, exc.reason))


_PATH_BYTES_ELSE_BACKSLASH = "sdopt.path_bytes_else_backslash"
codecs.register_error(_PATH_BYTES_ELSE_BACKSLASH, _path_bytes_else_backslash)


def main(argv: list[str] | None = None) -> int:
    with command_line():  # errors name the flags typed, not the keyword arguments a Python caller passes (errors.argument)
        return _main(argv)


# Seconds between a progress bar's redraws where stderr is no terminal (a CI log, `2> file`): tqdm's 0.1 s there writes
# each redraw as one more carriage-return-separated copy of the bar on a single ever-longer line.
BAR_SECONDS_OFF_A_TERMINAL = "30"


def _slow_bars_off_a_terminal() -> None:
    """Every bar sdopt draws is tqdm's, which reads TQDM_* from the environment once, when it is imported (after the
    arguments are parsed: `sdopt --help` imports no tqdm). A TQDM_MININTERVAL the user set wins."""
    import os

    stderr = sys.stderr
    if "TQDM_MININTERVAL" not in os.environ and not (stderr is not None and stderr.isatty()) and "tqdm" not in sys.modules:
        os.environ["TQDM_MININTERVAL"] = BAR_SECONDS_OFF_A_TERMINAL


def _main(argv: list[str] | None) -> int:
    # Under a locale that is not UTF-8, stdout cannot encode the × and — of sdopt's tables: printed as \xd7 (as Python's
    # stderr does), not a UnicodeEncodeError after the work is done (a bench printing its report.md). A path given in bytes
    # the locale cannot decode is printed in those bytes, as Python's own stdout does (surrogateescape); on stderr too, where
    # an error names the path (it read caf\udcc3\udca9/, a name the user never typed). Before the arguments are parsed:
    # `sdopt export --help` prints the — of its flags' help.
    for stream in (sys.stdout, sys.stderr):
        if callable(getattr(stream, "reconfigure", None)):
            stream.reconfigure(errors=_PATH_BYTES_ELSE_BACKSLASH)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not environment.cwd_exists():
        print(f"sdopt: error: {environment.NO_CWD}", file=sys.stderr)
        return SdoptError.exit_code
    _exit_on_sigterm()
    _slow_bars_off_a_terminal()
    warnings.formatwarning = _format_warning
    try:
        code = args.func(args)
        if sys.stdout is not None:  # None where the command started with stdout closed (`>&-`): print wrote nowhere
            sys.stdout.flush()  # so a reader that left is met here, not in the interpreter's flush at exit
        return code
    except SdoptError as exc:
        print(f"sdopt: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("sdopt: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _stdout_is_gone():
            raise  # another pipe (a worker's): a bug to see, not a reader that left
        return 141  # as a shell reports a command its reader stopped (`sdopt inspect ... | head`): 128 + SIGPIPE
    except Exception as exc:  # MemoryError too
        # What this process's environment made fail (memory, threads, file-size or disk limits, the interpreter's
        # settings): one line that says what to do, not a library's traceback. Anything else is a bug to see.
        if (said := environment.failure(exc)) is None:
            raise
        print(f"sdopt: error: {said}", file=sys.stderr)
        return SdoptError.exit_code


def _stdout_is_gone() -> bool:
    """Whether stdout is a pipe whose reader has gone away (poll says POLLERR on such a write end); if so,
    stdout now points at /dev/null, so that the interpreter's flush at exit does not fail on it again
    (the recipe of Python's signal docs)."""
    import os
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        gone = any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or stdout is no file
        return False
    if gone:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return gone
