"""``prefenv label``: serve a run's queued pairs to people in their browsers.

    prefenv train --env prefenv/HalfCheetah-v0 --teacher human --out runs/x    # posts queries
    prefenv label --run runs/x --annotator alice --annotator bob               # serves them

Each new annotator gets a link (``http://HOST:PORT/a/TOKEN``), printed once: the store keeps
only a hash of the token. A re-run names the annotators already registered; ``--reset-token
NAME`` prints a new link for one (the old one stops working). Binding anything but loopback
needs ``--access-token``, which the printed links then carry.
"""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

from prefenv.queue import QueryQueue

__all__ = ["add_label_parser", "cmd_label"]


def add_label_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``prefenv label`` on the main parser's subcommands."""
    parser = sub.add_parser("label", help="serve a run's queued pairs to people in a browser")
    parser.add_argument("--run", type=Path, required=True,
                        help="run folder of a `prefenv train --teacher human` run")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind; any but loopback needs --access-token "
                             "(default: %(default)s)")  # fmt: skip
    parser.add_argument("--port", type=int, default=8765, help="TCP port (default: %(default)s)")
    parser.add_argument("--annotator", action="append", default=[], metavar="NAME",
                        help="register this annotator and print their link (repeatable)")  # fmt: skip
    parser.add_argument("--reset-token", action="append", default=[], metavar="NAME",
                        help="print a new link for this annotator; the old one stops working "
                             "(repeatable)")  # fmt: skip
    parser.add_argument("--access-token", default=None, metavar="T",
                        help="token every request must carry (8+ URL-safe characters); required "
                             "unless --host is loopback")  # fmt: skip
    parser.add_argument("--gold-rate", type=float, default=None, metavar="R",
                        help="share of gold questions per annotator, in [0, 1) (default: the "
                             "run's, from labelling.json)")  # fmt: skip
    parser.add_argument("--lease-seconds", type=float, default=None, metavar="S",
                        help="seconds a handed-out query stays reserved for its annotator "
                             "(default: the run's, or 600)")  # fmt: skip
    parser.add_argument("--instructions", type=Path, default=None, metavar="FILE",
                        help="text file shown above every pair (default: the run's, else the "
                             "task's)")  # fmt: skip


def cmd_label(args: argparse.Namespace) -> int:
    """Register annotators, print their links and the stats page, then serve until Ctrl-C."""
    try:
        from prefenv.app.label_server import STORE_FILE, LabelSettings, serve
    except ImportError as error:
        raise ValueError(
            f"prefenv label needs the web server packages ({error.name} is missing): "
            "pip install 'prefenv[label]'"
        ) from error
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    settings = LabelSettings(
        host=args.host,
        port=args.port,
        access_token=args.access_token,
        gold_rate=args.gold_rate,
        lease_seconds=args.lease_seconds,
        instructions=_read_instructions(args.instructions),
    )
    with QueryQueue(args.run / STORE_FILE) as queue:
        lines = _register(queue, args.annotator, args.reset_token, args.run)
        progress = queue.progress("")  # open / waiting do not depend on the annotator
    base = _base_url(settings.host, settings.port)
    access = f"?access={settings.access_token}" if settings.access_token else ""
    print(f"prefenv label: {args.run} ({progress['waiting']} queries waiting)")
    for name, token, note in lines:
        link = f"{base}/a/{token}{access}" if token else note
        print(f"  {name:<16} {link}{'   ' + note if token and note else ''}")
    print(f"  {'stats':<16} {base}/stats{access}")
    if _is_ip(settings.host) and ipaddress.ip_address(_bare(settings.host)).is_unspecified:
        print(f"  ({settings.host} listens on every address: give people this machine's name "
              "or IP in place of it)")  # fmt: skip
    print("serving; stop with Ctrl-C", flush=True)
    serve(args.run, settings)
    return 0


def _register(
    queue: QueryQueue, names: list[str], resets: list[str], run: Path
) -> list[tuple[str, str | None, str]]:
    """``(name, new token or None, note)`` per annotator named on the command line.

    Raises:
        ValueError: no annotator at all (none registered, none given), a bad name, or a reset
            for an unknown one.
    """
    known = set(queue.annotators())
    lines: list[tuple[str, str | None, str]] = []
    for name in resets:
        if name not in known:
            raise ValueError(f"--reset-token {name}: no annotator {name!r} in {run}: add them "
                             f"with --annotator {name}")  # fmt: skip
        lines.append((name, queue.reset_token(name), "new link; the old one no longer works"))
    for name in dict.fromkeys(names):
        if name in resets:
            continue
        if name in known:
            lines.append((name, None, f"already registered (its link was printed then); a new "
                                      f"link: prefenv label --run {run} --reset-token {name}"))  # fmt: skip
        else:
            lines.append((name, queue.add_annotator(name), "shown once: keep it"))
    if not lines and not known:
        raise ValueError(f"{run} has no annotators yet: pass --annotator NAME (one per person)")
    return lines


def _read_instructions(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ValueError(f"--instructions {path}: cannot read it ({error.strerror})") from error
    if not text:
        raise ValueError(f"--instructions {path} is empty: write the instruction text in it")
    return text


def _bare(host: str) -> str:
    return host.strip("[]")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(_bare(host))
    except ValueError:
        return False
    return True


def _base_url(host: str, port: int) -> str:
    """``http://host:port``, an IPv6 address in brackets."""
    bare = _bare(host)
    shown = f"[{bare}]" if _is_ip(bare) and ipaddress.ip_address(bare).version == 6 else bare
    return f"http://{shown}:{port}"
