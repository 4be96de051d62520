"""``celeriac dlq``: list, show, replay and purge an app's dead letters.

A dead letter is a message a worker could not process (a body that is not an
envelope, a task name no worker has, a poison message), kept by its broker with
the reason. Each broker of an app keeps its own, so every subcommand reads every
broker of the app unless ``--broker`` picks one. The brokers are opened directly
(no publisher, no result sink): these commands only read and move dead letters.

Bodies come from anywhere and are often the very reason a message is a dead
letter, so nothing here trusts them: decoding failures are shown, not raised, and
every text that reaches the terminal has its control characters escaped.
"""

from __future__ import annotations

import base64
import json
import pprint
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
import click
import msgspec

from celeriac.abc import Broker, DeadLetter
from celeriac.app import App
from celeriac.brokers import open_broker
from celeriac.brokers._url import redact
from celeriac.cli.loading import AppParam
from celeriac.errors import CeleriacError
from celeriac.messages import Envelope

__all__ = ["dlq"]

T = TypeVar("T")

_FIRST_PAGE = 1000  # dead letters read at once when looking for ids
_WIDTHS = {"queue": 20, "task": 32, "reason": 60}  # table columns cut beyond these
_BODY_TEXT_LIMIT = 4096  # bytes of an undecodable body shown as text
_BODY_HEX_LIMIT = 512  # bytes of an undecodable binary body shown as hex
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")

_app_argument = click.argument("app", type=AppParam(), envvar="CELERIAC_APP")
_broker_option = click.option(
    "--broker",
    "broker_url",
    metavar="URL",
    help="Only this broker of the app (default: every broker).",
)


# -- text that is safe on a terminal -------------------------------------------------------


def printable(text: str) -> str:
    """``text`` with control and direction-changing characters escaped (``\\x1b``)."""

    def escape(match: re.Match[str]) -> str:
        code = ord(match.group())
        return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"

    return _UNSAFE.sub(escape, text)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _when(at: float, timespec: str = "seconds") -> str:
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec=timespec)
    return stamp.replace("+00:00", "Z")


def _raw(body: object) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    return str(body).encode("utf-8", "surrogatepass")


# -- decoding what may not decode --------------------------------------------------------


class Decoded(msgspec.Struct, frozen=True):
    """A dead letter's body read with the app's codec: the envelope, or why not."""

    envelope: Envelope | None
    error: str | None


def decode(app: App, letter: DeadLetter) -> Decoded:
    """Decode ``letter``'s body with ``app``'s codec (signatures are not checked here)."""
    try:
        return Decoded(app.codec.decode(_raw(letter.body), verify=False), None)
    except Exception as exc:  # any body at all can be here: report it, never raise
        return Decoded(None, f"{type(exc).__name__}: {exc}")


def _signature(app: App, envelope: Envelope) -> str | None:
    if not app.codec.signing:
        return None
    try:
        app.codec.verify(envelope)
    except Exception as exc:
        return f"INVALID ({type(exc).__name__}: {exc})"
    return "valid"


def _plain(envelope: Envelope) -> dict[str, Any]:
    """Every field of ``envelope`` (defaults too) as JSON-ready values."""
    fields = msgspec.structs.asdict(envelope)
    try:
        # msgpack bodies may hold bytes, extension types and non-string keys
        plain: dict[str, Any] = msgspec.to_builtins(fields, str_keys=True, enc_hook=repr)
    except (TypeError, ValueError):
        plain = {key: pprint.pformat(value) for key, value in fields.items()}
    return plain


def _envelope_text(envelope: Envelope) -> str:
    return json.dumps(_plain(envelope), indent=2, ensure_ascii=False)


def _body_lines(body: bytes) -> list[str]:
    """An undecodable body for a terminal: escaped text, or a hex dump if binary."""
    try:
        text: str | None = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if not body:
        return ["(empty)"]
    controls = len(_UNSAFE.findall(text)) if text is not None else 0
    if text is not None and controls <= len(text) // 10:
        shown = body[:_BODY_TEXT_LIMIT].decode("utf-8", "backslashreplace")
        lines = [printable(line) for line in shown.split("\n")]
        rest = len(body) - _BODY_TEXT_LIMIT
    else:
        lines = []
        for offset in range(0, min(len(body), _BODY_HEX_LIMIT), 16):
            chunk = body[offset : offset + 16]
            ascii_ = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
            lines.append(f"{offset:08x}  {chunk.hex(' '):<47}  {ascii_}")
        rest = len(body) - _BODY_HEX_LIMIT
    if rest > 0:
        lines.append(f"... ({rest} more bytes)")
    return lines


# -- brokers -------------------------------------------------------------------------------


def _pick(app: App, broker_url: str | None) -> list[str]:
    urls = app.broker_urls
    if broker_url is None:
        return urls
    for url in urls:
        if broker_url in (url, redact(url)):
            return [url]
    known = ", ".join(redact(u) for u in urls)
    raise click.BadParameter(
        f"{redact(broker_url)} is not a broker of this app (its brokers: {known})",
        param_hint="--broker",
    )


def _on_brokers(
    app: App, urls: Sequence[str], fn: Callable[[dict[str, Broker]], Awaitable[T]]
) -> T:
    """Connect to the brokers at ``urls``, run ``fn`` with them, close them."""

    async def main() -> T:
        brokers: dict[str, Broker] = {}
        try:
            for url in urls:
                broker = open_broker(url, app.hub)
                await broker.connect()
                brokers[url] = broker
            return await fn(brokers)
        finally:
            for broker in brokers.values():
                with anyio.CancelScope(shield=True):
                    await broker.close()

    try:
        return anyio.run(main)
    except CeleriacError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


async def _find(broker: Broker, id: str) -> DeadLetter | None:
    """The dead letter ``id`` on ``broker`` (brokers list newest first, so read deeper)."""
    limit = _FIRST_PAGE
    while True:
        letters = await broker.dead_letters(limit)
        for letter in letters:
            if letter.id == id:
                return letter
        if len(letters) < limit:
            return None
        limit *= 4


async def _replay_all(broker: Broker) -> int:
    """Replay every dead letter on ``broker`` once, in batches.

    A replayed message may come back as a dead letter while this runs (the worker
    still cannot process it); it is newest then, and is skipped rather than replayed
    again and again.
    """
    done: set[str] = set()
    count, limit = 0, _FIRST_PAGE
    while True:
        letters = await broker.dead_letters(limit)
        fresh = list(dict.fromkeys(lt.id for lt in letters if lt.id not in done))
        if fresh:
            count += await broker.replay(fresh)
            done.update(fresh)
        if len(letters) < limit:
            return count
        if not fresh:  # the newest are all ones replayed already: look further down
            limit *= 4


def _labels(urls: Sequence[str]) -> bool:
    return len(urls) > 1


# -- the commands --------------------------------------------------------------------------


@click.group()
def dlq() -> None:
    """Dead letters: messages no worker could process, kept with the reason."""


@dlq.command("list")
@_app_argument
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Show at most this many (the newest).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (reasons whole).")
@_broker_option
def list_(app: App, limit: int, as_json: bool, broker_url: str | None) -> None:
    """The newest dead letters, newest first."""
    urls = _pick(app, broker_url)

    async def read(brokers: dict[str, Broker]) -> list[tuple[str, DeadLetter]]:
        found = [(url, lt) for url, b in brokers.items() for lt in await b.dead_letters(limit)]
        found.sort(key=lambda pair: pair[1].at, reverse=True)
        return found[:limit]

    found = _on_brokers(app, urls, read)
    rows = [(url, letter, decode(app, letter)) for url, letter in found]
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "broker": redact(url),
                        "id": letter.id,
                        "queue": letter.queue,
                        "task": d.envelope.name if d.envelope is not None else None,
                        "reason": letter.reason,
                        "at": _when(letter.at, "milliseconds"),
                        "deliveries": letter.deliveries,
                    }
                    for url, letter, d in rows
                ],
                indent=2,
            )
        )
        return
    if not rows:
        click.echo(f"no dead letters on {', '.join(redact(u) for u in urls)}")
        return
    header = ["ID", "QUEUE", "TASK", "DELIVERIES", "WHEN (UTC)", "REASON"]
    table = [
        [
            printable(letter.id),
            _cut(printable(letter.queue), _WIDTHS["queue"]),
            _cut(printable(d.envelope.name), _WIDTHS["task"]) if d.envelope else "?",
            str(letter.deliveries),
            _when(letter.at),
            _cut(printable(letter.reason), _WIDTHS["reason"]),
        ]
        for url, letter, d in rows
    ]
    if _labels(urls):
        header.insert(0, "BROKER")
        for row, (url, _, _) in zip(table, rows, strict=True):
            row.insert(0, printable(redact(url)))
    widths = [max(len(cell) for cell in column) for column in zip(header, *table, strict=True)]
    for row in [header, *table]:
        cells = [
            c.rjust(w) if h == "DELIVERIES" else c.ljust(w)
            for c, w, h in zip(row, widths, header, strict=True)
        ]
        click.echo("  ".join(cells).rstrip())
    if len(found) == limit:
        click.echo(f"(the newest {limit}; --limit N for more)", err=True)


@dlq.command()
@_app_argument
@click.argument("id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (raw body in base64).")
@_broker_option
def show(app: App, id: str, as_json: bool, broker_url: str | None) -> None:
    """One dead letter whole: its envelope, or its raw body when it does not decode."""
    urls = _pick(app, broker_url)

    async def look(brokers: dict[str, Broker]) -> list[tuple[str, DeadLetter]]:
        found = []
        for url, broker in brokers.items():
            letter = await _find(broker, id)
            if letter is not None:
                found.append((url, letter))
        return found

    found = _on_brokers(app, urls, look)
    if not found:
        where = ", ".join(redact(u) for u in urls)
        raise click.ClickException(f"no dead letter with id {printable(id)!r} on {where}")
    url, letter = found[0]
    if len(found) > 1:
        others = ", ".join(redact(u) for u, _ in found[1:])
        click.echo(
            f"(a dead letter with this id is also on {others}: --broker to see it)", err=True
        )
    decoded = decode(app, letter)
    envelope = decoded.envelope
    body = _raw(letter.body)
    if as_json:
        out: dict[str, Any] = {
            "broker": redact(url),
            "id": letter.id,
            "queue": letter.queue,
            "reason": letter.reason,
            "at": _when(letter.at, "milliseconds"),
            "deliveries": letter.deliveries,
            "size": len(body),
            "envelope": _plain(envelope) if envelope is not None else None,
            "decode_error": decoded.error,
        }
        if envelope is not None and app.codec.signing:
            out["signature"] = _signature(app, envelope)
        if envelope is None:
            out["body_base64"] = base64.b64encode(body).decode()
        click.echo(json.dumps(out, indent=2, default=repr))
        return
    lines = [("id", letter.id)]
    if _labels(urls):
        lines.append(("broker", redact(url)))
    lines += [
        ("queue", letter.queue),
        ("task", envelope.name if envelope is not None else "?"),
        ("reason", letter.reason),
        ("when", f"{_when(letter.at, 'milliseconds')} (UTC)"),
        ("deliveries", str(letter.deliveries)),
        ("size", f"{len(body)} bytes"),
    ]
    if envelope is not None:
        if envelope.sent_at:
            lines.append(("sent", f"{_when(envelope.sent_at, 'milliseconds')} (UTC)"))
        signature = _signature(app, envelope)
        if signature is not None:
            lines.append(("signature", signature))
    elif decoded.error != letter.reason:  # why it does not decode now, if not the reason
        lines.append(("decode", decoded.error or "?"))
    for key, value in lines:
        click.echo(f"{key:<11} {printable(value)}")
    if envelope is not None:
        click.echo("envelope")
        for line in _envelope_text(envelope).splitlines():
            click.echo("  " + printable(line))
    else:
        click.echo("body")
        for line in _body_lines(body):
            click.echo("  " + line)


@dlq.command()
@_app_argument
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "every", is_flag=True, help="Replay every dead letter.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask before --all.")
@_broker_option
def replay(app: App, ids: tuple[str, ...], every: bool, yes: bool, broker_url: str | None) -> None:
    """Publish dead letters again, unchanged, and delete them.

    Ids that are not dead letters are reported and the exit code is 1; the others
    are replayed all the same.
    """
    if every == bool(ids):
        raise click.UsageError("give dead-letter ids, or --all (not both)")
    urls = _pick(app, broker_url)
    where = ", ".join(redact(u) for u in urls)
    if every and not yes:
        click.confirm(f"Replay every dead letter on {where}?", abort=True)
    wanted = list(dict.fromkeys(ids))

    async def run(brokers: dict[str, Broker]) -> tuple[dict[str, int], list[str]]:
        counts = dict.fromkeys(brokers, 0)
        if every:
            for url, broker in brokers.items():
                counts[url] = await _replay_all(broker)
            return counts, []
        missing = []
        for id in wanted:  # one at a time: the count tells which ids were there
            for url, broker in brokers.items():
                if await broker.replay([id]):
                    counts[url] += 1
                    break
            else:
                missing.append(id)
        return counts, missing

    counts, missing = _on_brokers(app, urls, run)
    total = sum(counts.values())
    click.echo(f"replayed {total} dead letter(s)")
    if _labels(urls):
        for url, count in counts.items():
            click.echo(f"  {printable(redact(url))}: {count}")
    for id in missing:
        click.echo(f"not found: {printable(id)} (no dead letter with this id on {where})", err=True)
    if missing:
        sys.exit(1)


@dlq.command()
@_app_argument
@click.option("-y", "--yes", is_flag=True, help="Do not ask first.")
@_broker_option
def purge(app: App, yes: bool, broker_url: str | None) -> None:
    """Delete every dead letter, for good."""
    urls = _pick(app, broker_url)
    where = ", ".join(redact(u) for u in urls)
    if not yes:
        click.confirm(f"Delete every dead letter on {where}?", abort=True)

    async def run(brokers: dict[str, Broker]) -> dict[str, int]:
        return {url: await broker.purge_dead_letters() for url, broker in brokers.items()}

    counts = _on_brokers(app, urls, run)
    click.echo(f"purged {sum(counts.values())} dead letter(s)")
    if _labels(urls):
        for url, count in counts.items():
            click.echo(f"  {printable(redact(url))}: {count}")
