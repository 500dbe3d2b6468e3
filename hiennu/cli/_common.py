"""Shared plumbing of the console scripts: one parser style, nnU-Net's spellings, exit codes.

Every command's parser comes from :func:`make_parser`: help on every flag with its default shown,
``--version``, ``-q/--quiet`` (no INFO lines and no progress bars), no abbreviated flags. nnU-Net's
spellings of the same options are accepted as hidden aliases (:func:`add_alias`). :func:`run`
turns user errors (:class:`HiennuError`) and file-system errors (:class:`OSError`) into one
``error: ...`` line and exit code 1.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
from typing import Any, Callable

import hiennu
from hiennu import memory
from hiennu.errors import HiennuError
from hiennu.log import configure
from hiennu.paths import DEFAULT_PLANS_NAME


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default after its help, unless the help already names it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))  # its name says it
        if ("%(default)" in text or "default" in text.lower() or flag
                or any(action.default is v for v in (None, False, argparse.SUPPRESS))  # "is": a default of 0 shows
                or (not action.option_strings and action.nargs not in ("?", "*"))):
            return text
        return text + " (default: %(default)s)"


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


class ExactParser(argparse.ArgumentParser):
    """An argument parser that reads single-dash options only as spelled.

    ``allow_abbrev=False`` stops abbreviated ``--long`` options only: argparse still reads ``-part_id 0`` as
    ``-p art_id``, ``-pl X`` as ``-p l`` and ``-t`` as ``-tr``, so nnU-Net's spellings that hiennu lacks set
    another option or fail on the wrong word. A single-dash token that is no option here (nor a number) is
    refused, named.
    """

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201 (argparse's signature)
        argv = list(sys.argv[1:] if args is None else args)
        for token in argv:
            if token == "--":
                break
            if (token.startswith("-") and not token.startswith("--") and len(token) >= 2 and not _is_number(token)
                    and token.split("=", 1)[0] not in self._option_string_actions
                    and not self._attached_number(token)):
                hint = (f" (for {token[:2]} {token[2:]}, write it with a space)"
                        if len(token) > 2 and token[:2] in self._option_string_actions else "")
                self.error(f"unrecognized option {token}: options are taken only as --help spells them{hint}")
        return super().parse_known_args(argv, namespace)

    def _attached_number(self, token: str) -> bool:
        """``-f0``, ``-d5``: a one-letter option that takes a value, with a number attached (argparse's own short
        form, unambiguous); ``-pXYZ`` stays refused, since ``-part_id``, ``-pl`` ... are nnU-Net's other options."""
        action = self._option_string_actions.get(token[:2])
        return action is not None and action.nargs != 0 and _is_number(token[2:])


def make_parser(prog: str, description: str, quiet_help: str = "warnings and errors only, no progress bars"
                ) -> argparse.ArgumentParser:
    """An argument parser with the flags every hiennu command shares: ``--version`` and ``-q/--quiet``."""
    p = ExactParser(prog=prog, description=description, formatter_class=HelpFormatter, allow_abbrev=False)
    p.add_argument("--version", action="version", version=f"%(prog)s (hiennu) {hiennu.__version__}",
                   help="print the hiennu version and exit")
    p.add_argument("-q", "--quiet", action="store_true", help=quiet_help)
    return p


def add_alias(parser: argparse.ArgumentParser, *flags: str, dest: str, **kwargs: Any) -> None:
    """A hidden extra spelling (nnU-Net's) of an existing option: same destination, not in ``--help``."""
    parser.add_argument(*flags, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)


def add_positional_spelling(parser: argparse.ArgumentParser, dest: str, metavar: str, help: str,
                            type: Any = str) -> None:
    """nnU-Net's positional spelling of an option hiennu names with a flag (``hiennu_find_best_configuration 1``,
    ``hiennu_evaluate REF PRED``); :func:`merge_positional` fills the option from it after parsing."""
    parser.add_argument(f"{dest}_positional", nargs="?", default=None, metavar=metavar, help=help, type=type)


def merge_positional(parser: argparse.ArgumentParser, args: argparse.Namespace, dest: str, flag: str,
                     looks_positional: Callable[[Any], bool] = lambda value: False) -> None:
    """``args.<dest>`` from the flag ``flag`` or from its positional spelling (:func:`add_positional_spelling`): both
    given (unless spelled alike), or neither, is the parser's usage error naming them (and, when a value of an option
    that takes several ``looks_positional``, saying it was probably meant as the positional: :func:`swallowed_hint`)."""
    positional = getattr(args, f"{dest}_positional")
    delattr(args, f"{dest}_positional")
    given = getattr(args, dest)
    if positional is not None and given is not None and str(positional) != str(given):
        parser.error(f"{flag} {given} and the positional {positional} both given; give the {dest} once")
    if positional is None and given is None:
        parser.error(f"the following arguments are required: {flag} (or its positional spelling, as nnU-Net's)"
                     f"{swallowed_hint(parser, args, looks_positional)}")
    setattr(args, dest, given if given is not None else positional)


def swallowed_hint(parser: argparse.ArgumentParser, args: argparse.Namespace,
                   looks_positional: Callable[[Any], bool]) -> str:
    """``"; was it read as a value of -c? ..."`` when a value of an option that takes several values
    ``looks_positional`` (such an option reads every word that follows it, a positional meant for the command too),
    else ``""``: the text to end a "required" error."""
    given = [action.option_strings[0] for action in parser._actions
             if action.option_strings and action.nargs in ("+", "*")
             and isinstance(getattr(args, action.dest, None), list) and getattr(args, action.dest) != action.default
             and any(looks_positional(value) for value in getattr(args, action.dest))]
    if not given:
        return ""
    return (f"; was it read as a value of {' or '.join(given)}? An option that takes several values takes every word "
            f"after it: give the positional first, or end the option's values with --")


def device_arg(text: str) -> str:
    """argparse type of ``--device``: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    from hiennu.device import parse_device  # here, not above: hiennu.device imports torch, which a command that
    # needs no network (hiennu_evaluate, the post-processing commands) would pay about 1.4 s to start for
    try:
        kind, index = parse_device(text)
    except HiennuError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return kind if index is None else f"{kind}:{index}"


def add_device(parser: argparse.ArgumentParser, default: str | None = None, help: str | None = None) -> None:
    """``--device`` (and nnU-Net's ``-device``) with the one syntax every command accepts (help: default
    :data:`hiennu.device.DEVICE_HELP`)."""
    from hiennu.device import DEVICE_HELP
    parser.add_argument("--device", type=device_arg, default=default, metavar="DEVICE",
                        help=DEVICE_HELP if help is None else help)
    add_alias(parser, "-device", dest="device", type=device_arg)


def add_plans_name(parser: argparse.ArgumentParser, help: str) -> None:
    """nnU-Net's ``-p/--plans-name``."""
    parser.add_argument("-p", "--plans-name", default=DEFAULT_PLANS_NAME, metavar="NAME", help=help)


def os_error_line(e: OSError) -> str:
    """``PATH: reason`` (or ``SRC -> DST: reason``) of a file-system error, on one line."""
    reason = (e.strerror or str(e) or type(e).__name__).replace("\n", " ")
    if e.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT):
        reason += ("; choose a folder you can write to (for results, e.g. export hiennu_results=...) or free some "
                   "space, and run the command again")
    elif e.errno in (errno.EACCES, errno.EPERM):
        reason += "; check its permissions (read access for inputs, write access for outputs)"
    if e.filename is not None and e.filename2 is not None:
        return f"{e.filename} -> {e.filename2}: {reason}"
    if e.filename is not None:
        return f"{e.filename}: {reason}"
    return reason


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a job scheduler's time limit), raised where the command is, as Ctrl-C is."""


_COMMAND_PID: list[int] = []  # the process that installed the handler (forked workers inherit it)


def _raise_terminated(signum: int, frame: Any) -> None:
    if _COMMAND_PID and os.getpid() != _COMMAND_PID[-1]:  # a forked worker: end as SIGTERM ends it by default
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM while unwinding would cut the cleanup short
    raise Terminated()


def run(func: Callable[[], int | None], verbose: bool = True, runs_networks: bool = False,
        resume: str | None = None) -> int:
    """Call ``func`` with logging set up; print user and file-system errors as ``error: ...`` (exit code 1).

    ``verbose`` False (``-q``) shows warnings and errors only and draws no progress bars. ``runs_networks``: the
    command trains or predicts, so glibc keeps the network's freed buffers (:func:`hiennu.memory.keep_freed_memory`;
    prediction 1.34x, bf16 training steps 1.18x, benchmarks.md). SIGTERM is handled as
    Ctrl-C (exit code 143 instead of 130): the command unwinds, so what a ``finally`` or an interrupted training
    cleans up is cleaned up, and Python's exit ends the worker processes it started (killed outright, the process
    left its data-loading workers running on their own). ``resume``: how to go on after an interruption, printed
    with it (e.g. "run the same command again: ...").
    """
    configure(verbose=verbose, show_progress=verbose)
    if runs_networks:
        memory.keep_freed_memory()
    installed, previous = False, None
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN):  # a parent that ignores it keeps it ignored
        _COMMAND_PID.append(os.getpid())
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
        installed = True
    try:
        code = func()
    except HiennuError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated)
        print(("terminated" if terminated else "interrupted") + (f"; {resume}" if resume else ""), file=sys.stderr)
        return 143 if terminated else 130
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
            _COMMAND_PID.pop()
    return int(code or 0)
