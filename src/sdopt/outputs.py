"""Writing outputs: atomic output folders and output files written whole, what --force may replace, checks that an
output or work folder can be written before any work, the stale temporary folders of killed commands
(reading and hashing files: sdopt.file_reading; folder locks: sdopt.locks; a write that met a full disk or a
file-size limit: sdopt.write_failures).

Every command that writes an artifact writes it into a hidden temporary
sibling folder and renames it into place only when complete, so an export
that fails or is killed leaves nothing that looks like an artifact. A killed
command's temporary folder is removed by the next command writing to the same
place, or by `sdopt clean`.

This module decides what ``--force`` may delete of an output folder: only a
folder that sdopt wrote (it lists its files in ``.sdopt-files``) and that still
holds nothing else, and never the command's input or a folder containing it.
(``sdopt bench -o DIR --force`` is another rule, bench/runner.py's
check_report_folder: it removes an earlier bench's report files and raw/ from
DIR, and nothing else.)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from sdopt.errors import SdoptError, exception_line
from sdopt.file_reading import tree_size
from sdopt.locks import swapping_into
from sdopt.write_failures import DISK_FULL, file_size_limit, file_too_large, out_of_space, past_file_size_limit, size_text

INCOMPLETE_MARKER = ".sdopt-incomplete"
# Every file of a finished output folder, one relative path a line: what --force may later remove.
WRITTEN_LIST = ".sdopt-files"
_TEMP_KINDS = (".tmp-", ".old-")  # .NAME.tmp-XXXX while writing, .NAME.old-XXXX while swapping in


def check_output_dir(out: str | Path, force: bool = False, inputs: tuple[str | Path, ...] = ()) -> Path:
    """Fail early, before any work, when out cannot be written as asked.

    ``inputs`` are the folders the command reads: out may never be one of them
    or contain one, with or without --force.
    """
    out = Path(out).expanduser()
    for source in inputs:
        if how := _placement(out, source):
            # Inside the input, it would be an unlisted folder in it: the input would fail its own verification.
            raise SdoptError(f"the output {out} {how} the input {source}: choose an output folder outside the input")
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        if not force:
            raise SdoptError(f"{out} already exists: choose another output path, or pass --force to replace it")
        check_replaceable(out)
    probe = nearest_existing(out.parent if str(out.parent) else Path("."))
    if not probe.is_dir():  # its parent, or a folder above it that is missing: made at the end, they could not be
        raise SdoptError(f"cannot write {out}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise SdoptError(f"cannot write {out}: {probe} is not writable; choose an output path you can write to")
    # os.access says root may write anywhere: a command that enters atomic_output_dir only at its end (distill-decoder,
    # optimize) would find /proc or a read-only mount after all its work. Its temporary sibling goes in this folder.
    check_can_create_in(probe, out)
    return out


def check_free_space(out: str | Path, estimate: int, what: str) -> None:
    """Refuse, before the work, an output its disk obviously cannot hold: less free space than nine tenths of
    ``estimate``, the bytes ``what`` will take (an estimate: the tenth spares an output a little smaller than foreseen).
    sd15's ONNX export onto a 1 GiB disk failed on its full disk only after a minute's work. Free space that cannot be
    read refuses nothing: the write's own error still says a full disk."""
    probe = nearest_existing(Path(out).expanduser().absolute().parent)
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if free < 0.9 * estimate:
        raise SdoptError(f"cannot write {out}: {what} takes about {size_text(estimate)}, and the disk of {probe} has "
                         f"{size_text(free)} free; {DISK_FULL}")


def _placement(out: Path, source: str | Path) -> str | None:
    """How an output path stands to an input folder: it "is" it, "contains" it, "is inside" it, or None (apart)."""
    resolved, inner = out.absolute().resolve(), Path(source).absolute().resolve()
    return "is" if inner == resolved else "contains" if resolved in inner.parents else "is inside" if inner in resolved.parents else None


def make_work_dir(work: Path, inputs: tuple[str | Path, ...] = (), output: str | Path | None = None) -> Path:
    """The folder a command keeps what it builds in (bench --build-from --work, optimize's), made before any work: a
    place that takes no folders (/proc, under a file, a read-only mount) is one line, not an OSError traceback.

    It may not be or lie inside one of ``inputs`` (what it builds there would be refused, each an output inside the
    input), and is apart from ``output`` (optimize's -o, renamed into place at the end: which found it, after all the
    building and benching, to be the output, inside it or holding it)."""
    for source in inputs:
        if (how := _placement(work, source)) in ("is", "is inside"):
            raise SdoptError(f"--work {work} {how} the input {source}: choose a work folder outside the input")
    if output is not None and (how := _placement(work, Path(output).expanduser())):
        raise SdoptError(f"--work {work} {how} the output {output}: choose a work folder apart from the output (the default is OUTPUT.work)")
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SdoptError(f"cannot make the work folder {work}: {exc.strerror or exc}; choose a folder you can write to (--work)") from None
    check_can_create_in(work, work)
    return work


def nearest_existing(path: Path) -> Path:
    """The path itself or its nearest existing ancestor: it decides whether we may create what is missing."""
    while not path.exists():
        path = path.parent
    return path


def local_inputs(*models: str | Path) -> tuple[Path, ...]:
    """The inputs that are local paths (a hub id names no folder here yet)."""
    return tuple(Path(m).expanduser() for m in models if Path(m).expanduser().exists())


def written_files(folder: Path) -> set[str] | None:
    """The files sdopt recorded writing into folder, or None when it recorded nothing."""
    try:
        return {line for line in (folder / WRITTEN_LIST).read_text().splitlines() if line}
    except (OSError, UnicodeDecodeError):
        return None


def _files_below(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def check_replaceable(out: Path) -> None:
    """--force may remove out only if sdopt wrote it and it holds nothing sdopt did not write."""
    if not out.is_dir() or out.is_symlink():
        raise SdoptError(f"{out} is not a folder sdopt wrote: --force replaces only sdopt's own output folders; remove it yourself or choose another path")
    written = written_files(out)
    if written is None:
        raise SdoptError(
            f"{out} was not written by this version of sdopt (it has no {WRITTEN_LIST} list), so --force will not delete it: "
            "remove it yourself or choose another output path"
        )
    foreign = sorted(_files_below(out) - written - {WRITTEN_LIST})
    if foreign:
        raise SdoptError(
            f"{out} holds {len(foreign)} file(s) sdopt did not write ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}), "
            "so --force will not delete it: move them out, or choose another output path"
        )


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine: a stale temporary folder's, a killed save's partial files', a Ray job's
    folder's writer (sdopt.cluster.bench)."""
    if sys.platform == "win32":
        # Not os.kill(pid, 0): on Windows signal 0 is CTRL_C_EVENT, and os.kill asks the console to send a Ctrl-C to
        # process group pid; it says nothing of whether pid runs (it succeeds, or raises an OSError, for a dead one too).
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return not _zombie(pid)


def _windows_pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (Windows: OpenProcess, then GetExitCodeProcess's STILL_ACTIVE), as psutil asks."""
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.GetExitCodeProcess.argtypes = (wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD))
    kernel32.CloseHandle.argtypes = (wintypes.HANDLE,)
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5  # ERROR_ACCESS_DENIED: someone else's live process; else no such process
    try:
        code = wintypes.DWORD()
        return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def _zombie(pid: int) -> bool:
    """A killed process its parent has not reaped yet (in a container whose first process never reaps, for ever):
    os.kill still finds it, but it writes nothing more."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS), or it just went
        return False
    return stat[stat.rfind(")") + 2:].startswith("Z")


def stale_temp_folders(parent: Path, name: str | None = None) -> list[Path]:
    """sdopt's temporary folders under parent (for output ``name``, or any) whose writer is gone.

    Only a folder with sdopt's marker whose recorded process no longer runs on
    this host is stale: a folder without the marker was not made by sdopt, a
    live writer's folder is in use, and another host's (a shared file system)
    cannot be judged from here. A marker without a pid was left by an sdopt
    older than this rule, which cannot still be writing it.
    """
    stale = []
    if not parent.is_dir():
        return stale
    for path in parent.iterdir():
        if not (path.is_dir() and not path.is_symlink() and path.name.startswith(".")):
            continue
        stem, kind, _ = _split_temp_name(path.name)
        if kind is None or (name is not None and stem != name):
            continue
        if kind == ".tmp-":
            writer = _marker_writer(path / INCOMPLETE_MARKER)
            if writer is None:  # no marker: not sdopt's
                continue
            pid, host = writer
            if pid is not None and (host != socket.gethostname() or pid_alive(pid)):
                continue
        elif not _is_old_swap(path, stem) or not (parent / stem).exists():
            continue  # while the output itself is missing, the moved-aside old one is the only copy
        stale.append(path)
    return stale


def _split_temp_name(name: str) -> tuple[str, str | None, str]:
    for kind in _TEMP_KINDS:
        stem, sep, token = name[1:].rpartition(kind)
        if sep and stem and token:
            return stem, kind, token
    return name, None, ""


def _marker_writer(marker: Path) -> tuple[int | None, str | None] | None:
    """(pid, host) from sdopt's marker; (None, None) for an older marker; None without one."""
    try:
        text = marker.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    words = text.split()
    if "pid" not in words or "host" not in words:
        return None, None
    pid, host = words[words.index("pid") + 1], words[words.index("host") + 1]
    return (int(pid) if pid.isdigit() else None), host


def _is_old_swap(path: Path, stem: str) -> bool:
    """A .NAME.old-XXXX folder holds one sdopt output, NAME, moved aside during a --force swap, under sdopt's marker:
    without it, a user's own backup of an artifact (.NAME.old-2024/NAME/sdopt.json) looked the same and was removed."""
    if _marker_writer(path / INCOMPLETE_MARKER) is None:
        return False
    children = [child for child in path.iterdir() if child.name != INCOMPLETE_MARKER]
    return (len(children) == 1 and children[0].name == stem and children[0].is_dir()
            and (written_files(children[0]) is not None or (children[0] / "sdopt.json").is_file()))


def temp_folders_in_use(parent: Path) -> list[tuple[Path, int | None, str | None]]:
    """sdopt's marked temporary folders under parent that stale_temp_folders leaves: (folder, pid, host) of a writer
    that still runs here, or of another host's (which cannot be judged from here)."""
    stale = set(stale_temp_folders(parent))
    out = []
    for path in sorted(parent.iterdir()) if parent.is_dir() else ():
        if path in stale or not path.is_dir() or _split_temp_name(path.name)[1] != ".tmp-":
            continue
        writer = _marker_writer(path / INCOMPLETE_MARKER)
        if writer is not None:
            out.append((path, *writer))
    return out


def remove_stale_temp_folders(parent: Path, name: str | None = None, dry_run: bool = False) -> list[tuple[Path, int]]:
    """Remove (or with ``dry_run`` only list) the stale temporary folders; returns each with its size in bytes."""
    removed = []
    for path in stale_temp_folders(parent, name):
        removed.append((path, tree_size(path)))
        if not dry_run:
            shutil.rmtree(path, ignore_errors=True)
    return removed


def check_output_files(paths: list[Path], inputs: tuple[str | Path, ...] = ()) -> None:
    """Before any work: each output file can be written (its folder is creatable and writable, it is no folder), and is
    not inside one of ``inputs`` (the folders the command reads), where it would be an unlisted file that fails the
    input's verification."""
    for path in paths:
        for source in inputs:
            if _placement(path, source) == "is inside":
                raise SdoptError(f"the output {path} is inside the input {source}: choose an output path outside the input")
        if path.is_dir():
            raise SdoptError(f"-o {path} is a folder: give a file name such as {path / 'out.png'}")
        if path.is_char_device():  # /dev/null: written as it is, nothing created beside it
            if not os.access(path, os.W_OK):
                raise SdoptError(f"cannot write {path}: it is not writable")
            continue
        probe = nearest_existing(path.parent if str(path.parent) else Path("."))
        if not probe.is_dir():
            raise SdoptError(f"cannot write {path}: {probe} is a file, not a folder")
        if not os.access(probe, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise SdoptError(f"cannot write {path}: {probe if not path.exists() else path} is not writable; choose an output path you can write to")
        check_can_create_in(probe, path)


def check_can_create_in(folder: Path, path: Path) -> None:
    """Before any work: a file can be created in ``folder`` (the nearest existing folder of ``path``), tried with
    one that is removed at once — os.access cannot see read-only mounts, /proc, or what root may not write."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".sdopt-probe-", dir=folder)
    except OSError as exc:
        raise SdoptError(f"cannot write {path}: {folder} does not take new files ({exc.strerror or exc}); "
                         "choose an output path you can write to") from None
    os.close(handle)
    os.unlink(probe)


def replace_file(partial: Path, path: Path) -> None:
    """``partial`` renamed over ``path`` (os.replace), where that is refused said in one line: Windows refuses to replace
    a file another program holds open (a spreadsheet with results.csv, an image viewer), which was a PermissionError
    traceback after the work was done."""
    try:
        os.replace(partial, path)
    except PermissionError as exc:
        raise SdoptError(f"cannot replace {path}: {exc.strerror or exc}; if another program has it open (on Windows an open "
                         "file cannot be replaced), close it and run again, or write elsewhere") from None


def _host_tag() -> str:
    """This host, short enough for a file name: a partial file's writer is judged only on the host that wrote it."""
    import hashlib

    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _remove_stale_partials(path: Path) -> None:
    """The partial files of ``path`` whose writer, on this host, is gone: a command killed while saving (SIGKILL, the
    OOM killer) left its .NAME.HOST-PID-XXXXXX.partial files, one per image, and nothing ever removed them. A live
    writer's, another host's (a shared folder) and an older sdopt's (no host in the name) are left alone."""
    prefix, host = f".{path.name}.", _host_tag()
    try:
        siblings = list(path.parent.iterdir())
    except OSError:  # no folder yet, or one that cannot be listed: nothing of ours to clean there
        return
    for sibling in siblings:
        if not (sibling.name.startswith(prefix) and sibling.name.endswith(".partial")):
            continue
        tag, _, rest = sibling.name[len(prefix):-len(".partial")].partition("-")
        pid = rest.partition("-")[0]
        if tag == host and pid.isdigit() and not pid_alive(int(pid)) and sibling.is_file() and not sibling.is_symlink():
            sibling.unlink(missing_ok=True)


@contextlib.contextmanager
def files_written_whole(paths: list[Path]) -> Iterator[list[Path]]:
    """Yield the path to write for each of ``paths``: a partial file beside it (the path itself for a character device,
    -o /dev/null). When the block ends, every partial replaces its path, all of them written first; on an error or an
    interrupt each is removed. So no half file is left, none it replaces is truncated, and a set is never part new.
    Each partial's name is this call's own: two commands writing one path (two `generate -o same.png`) had shared
    .NAME.partial, one truncating the other's half-written file, which the first then renamed into place (or failed
    with a FileNotFoundError traceback, the other having renamed it first); now the last to finish replaces it whole."""
    token = f"{_host_tag()}-{os.getpid()}-{secrets.token_hex(3)}"
    partials = [path if path.is_char_device() else path.with_name(f".{path.name}.{token}.partial") for path in paths]
    for path in paths:
        _remove_stale_partials(path)
    try:
        modes = {}
        for path, partial in zip(paths, partials):
            if partial != path:  # the mode a plain open() gives (the umask's); safetensors writes its files 0600
                partial.touch()
                modes[partial] = partial.stat().st_mode & 0o777
        yield partials
        for path, partial in zip(paths, partials):
            if partial != path:
                partial.chmod(modes[partial])
                replace_file(partial, path)
    finally:
        for path, partial in zip(paths, partials):
            if partial != path:
                partial.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, force: bool = False, inputs: tuple[str | Path, ...] = ()) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``out``, on failure it is removed."""
    out = check_output_dir(out, force, inputs).absolute()
    remove_stale_temp_folders(out.parent, out.name)  # what a killed run into the same place left
    # A sibling, so the final rename stays on one filesystem and is atomic. os.mkdir rather
    # than mkdtemp: mkdtemp's 0700 mode would end up on the finished artifact.
    tmp = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(tmp)
    except OSError as exc:  # read-only file systems, /proc, permissions os.access cannot see
        raise SdoptError(f"cannot write {out}: {exc.strerror}; choose an output path you can write to") from exc
    # A process killed outright (SIGKILL) cannot clean up; this marker makes sure that what it
    # leaves is never read as an artifact (manifest.read_manifest refuses it).
    # The writer's pid tells a later run (or `sdopt clean`) whether the folder is still in use. Inside the try: a
    # folder left without the marker is not sdopt's to the next run and `sdopt clean`, and stays for ever.
    swapping = contextlib.ExitStack()
    try:
        _mark_unfinished(tmp, "writing this folder")
        yield tmp
        (tmp / INCOMPLETE_MARKER).unlink()
        (tmp / WRITTEN_LIST).write_text("".join(f"{p}\n" for p in sorted(_files_below(tmp))))
        _apply_umask(tmp)
        # Held from this check to the end of the swap: another sdopt command finishing into out waits here.
        swapping.enter_context(swapping_into(out.parent))
        try:
            check_output_dir(out, force, inputs)
        except SdoptError as exc:  # someone created it while we wrote: "already exists" alone read as a wrong check
            raise SdoptError(f"{out} was written by another command while this one worked: {exc}") from None
    except BaseException as exc:
        # Also on KeyboardInterrupt: a half-written folder must never look like an artifact.
        swapping.close()
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception) and not isinstance(exc, SdoptError):
            if out_of_space(exc):
                raise SdoptError(f"cannot write {out}: its disk is full (what was written is removed); {DISK_FULL}") from exc
            if past_file_size_limit(exc):
                what, advice = file_too_large()
                raise SdoptError(f"cannot write {out}: {what} (what was written is removed); {advice}") from exc
            if "iostream error" in str(exc):  # all OpenVINO says when it cannot write (its disk full: the usual reason)
                if limit := file_size_limit():  # or a file passed ulimit -f: it says the same
                    raise SdoptError(f"cannot write {out}: OpenVINO failed writing it ({exception_line(exc)}): this process may "
                                     f"write no file over {size_text(limit)} (ulimit -f), or the disk is full (what was written is "
                                     f"removed); raise the limit, or {DISK_FULL}") from exc
                raise SdoptError(f"cannot write {out}: OpenVINO failed writing it ({exception_line(exc)}), most likely for want of "
                                 f"disk space (what was written is removed); {DISK_FULL}") from exc
        raise
    with swapping:
        if out.exists():
            # --force: move the old folder aside first, so a crash here never loses both.
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            try:
                _mark_unfinished(old, f"replacing {out.name}")  # what tells `sdopt clean` this folder is sdopt's (_is_old_swap)
                os.replace(out, old / out.name)
            except OSError as exc:  # a mount point (a container's volume), an immutable folder: it cannot move
                shutil.rmtree(old, ignore_errors=True)
                _fill_in_place(tmp, out, exc)
                return
            os.replace(tmp, out)
            swapping.close()  # before the old one is removed: a large artifact takes seconds, another swap need not wait
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)


def _mark_unfinished(folder: Path, doing: str) -> None:
    """The marker readers refuse, naming this process (pid and host: _marker_writer reads them back)."""
    (folder / INCOMPLETE_MARKER).write_text(f"an sdopt command was {doing} and did not finish: pid {os.getpid()} host {socket.gethostname()}\n")


def _fill_in_place(tmp: Path, out: Path, why: OSError) -> None:
    """The finished ``tmp`` into ``out``, which cannot be renamed (``why``): moved in entry by entry when ``out`` is
    empty, under the marker that keeps a half-moved folder from being read as an artifact; else an error that says
    where the finished output is (nothing is lost)."""
    kept = f"the finished output is kept in {tmp}: move its contents into {out} yourself, or choose another output path"
    if any(out.iterdir()):
        raise SdoptError(f"cannot replace {out}: {why.strerror} (it cannot be moved aside); {kept}") from why
    try:
        _mark_unfinished(out, "moving its output here")
    except OSError as exc:
        raise SdoptError(f"cannot write into {out}: {exc.strerror}; {kept}") from exc
    for child in sorted(tmp.iterdir()):
        shutil.move(str(child), str(out / child.name))  # a rename, or a copy where out is another file system
    (out / INCOMPLETE_MARKER).unlink()
    tmp.rmdir()


def _apply_umask(folder: Path) -> None:
    """Give every file the mode a plain open() would have.

    safetensors and some exporters write their files 0600; an artifact is meant
    to be shared like any other file. The folder's own mode (made by os.mkdir)
    carries the umask.
    """
    file_mode = folder.stat().st_mode & 0o666
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(file_mode)
