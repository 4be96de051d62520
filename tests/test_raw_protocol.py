"""The "any language" proof: raw bytes in, a real worker, raw bytes out.

Nothing here builds a message with celeriac's Envelope or Codec. Messages are JSON
text written by hand (or by ``tests/messages/foreign.py``, a standard-library client
written from docs/protocol.md, or by the example program in docs/protocol.md itself),
inserted into the SQLite broker's table with ``sqlite3`` exactly as the document tells
a foreign program to, and results are read back with ``sqlite3`` and parsed by hand.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import jsonschema
import pytest
from referencing import Registry, Resource

from celeriac import App, TaskError, Worker
from celeriac.errors import SignatureError
from tests.apps.protocol_app import make_app
from tests.messages import foreign

pytestmark = pytest.mark.anyio

DOCS = Path(__file__).resolve().parent.parent / "docs"
SCHEMA = json.loads((DOCS / "protocol.schema.json").read_text())
RESULT_DOCUMENT = jsonschema.Draft202012Validator(
    {"$ref": f"{SCHEMA['$id']}#/$defs/ResultDocument"},
    registry=Registry().with_resource(SCHEMA["$id"], Resource.from_contents(SCHEMA)),
)
TIMEOUT = 10.0


@pytest.fixture
def db(sqlite_url: str) -> str:
    """The broker file's path, as a foreign program would open it."""
    return sqlite_url.removeprefix("sqlite:///")


@asynccontextmanager
async def running(app: App) -> AsyncIterator[Worker]:
    """A real worker for ``app`` in this event loop (it creates the tables)."""
    worker = app.worker(grace=1, concurrency=2, heartbeat=0.5)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        try:
            yield worker
        finally:
            worker.request_stop()
            await worker.wait_stopped()


async def publish(db: str, body: bytes | str, msg_id: str, **columns: Any) -> None:
    await anyio.to_thread.run_sync(lambda: foreign.publish(db, body, msg_id=msg_id, **columns))


async def result(db: str, task_id: str) -> dict[str, Any]:
    document = await anyio.to_thread.run_sync(foreign.wait_result, db, task_id, TIMEOUT)
    assert document is not None, f"no result for {task_id}"
    return document


async def dead_letters(db: str, ids: set[str]) -> dict[str, str]:
    """Wait until every id in ``ids`` is a dead letter; all dead letters by id."""
    with anyio.fail_after(TIMEOUT):
        while True:
            found = await anyio.to_thread.run_sync(foreign.dead_letters, db)
            if ids <= set(found):
                return found
            await anyio.sleep(0.01)


def rows(db: str, sql: str, *params: Any) -> list[Any]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def new_id() -> str:
    return os.urandom(16).hex()


def left_a_mark(path: Path) -> bool:
    """Whether protocol.touch wrote ``path`` (or the path a forger substituted)."""
    return path.exists() or Path(f"{path}.elsewhere").exists()


# -- publish raw, read raw ----------------------------------------------------------------


async def test_raw_command_in_raw_result_out(db: str, sqlite_url: str) -> None:
    app = make_app(sqlite_url)
    add, fail, echo, later = new_id(), new_id(), new_id(), new_id()
    eta = time.time() + 0.3
    async with running(app):
        # Minimal: only the two required fields and the arguments.
        await publish(
            db, b'{"id": "%s", "name": "protocol.add", "args": [2, 3]}' % add.encode(), add
        )
        await publish(
            db,
            b'{"name":"protocol.fail","id":"%s","args":["no luck"],"v":1,"kind":"command"}'
            % fail.encode(),
            fail,
        )
        await publish(
            db,
            json.dumps(
                {
                    "id": echo,
                    "name": "protocol.echo",
                    "args": [1, 2.5, None, "é"],
                    "kwargs": {"nested": {"list": [True]}},
                    "priority": 7,
                    "headers": {"x-origin": "test"},
                    "correlation_id": "flow-1",
                }
            ).encode(),
            echo,
            priority=7,
        )
        await publish(
            db,
            json.dumps({"id": later, "name": "protocol.add", "args": [1, 1], "eta": eta}).encode(),
            later,
            available_at=eta,
        )
        documents = {i: await result(db, i) for i in (add, fail, echo, later)}

    for task_id, document in documents.items():
        assert RESULT_DOCUMENT.is_valid(document), document
        assert document["id"] == task_id
        assert document["kind"] == "document"
        assert document["causation_id"] == task_id
        assert "signature" not in document
    assert documents[add]["name"] == "protocol.add"
    assert documents[add]["body"]["state"] == "SUCCESS"
    assert documents[add]["body"]["result"] == 5
    error = documents[fail]["body"]["error"]
    assert documents[fail]["body"]["state"] == "FAILURE"
    assert error["type"] == "ProtocolAppError"
    assert error["module"] == "tests.apps.protocol_app"
    assert error["message"] == "no luck"
    assert error["args"] == ["no luck"]
    assert "Traceback" in error["traceback"]
    assert documents[echo]["body"]["result"] == {
        "args": [1, 2.5, None, "é"],
        "kwargs": {"nested": {"list": [True]}},
    }
    assert documents[echo]["correlation_id"] == "flow-1"
    assert documents[later]["body"]["result"] == 2
    assert rows(db, "SELECT state FROM celeriac_documents WHERE id = ?", later) == [("SUCCESS",)]
    assert rows(db, "SELECT count(*) FROM celeriac_messages") == [(0,)]  # all acknowledged
    # The failed task, retried once (the app's policy), waits in the dead letters.
    [(letter, reason)] = rows(db, "SELECT id, reason FROM celeriac_dead_letters")
    assert letter == fail
    assert reason.startswith("RetriesExhausted: failed after 1 retries: ProtocolAppError")


async def test_the_example_program_in_the_doc(db: str, sqlite_url: str) -> None:
    text = (DOCS / "protocol.md").read_text()
    found = re.search(
        r"<!-- example-program -->\n```python\n(.*?)```\n<!-- /example-program -->", text, re.S
    )
    assert found, "the example program is missing from docs/protocol.md"
    program: dict[str, Any] = {"__name__": "protocol_md_example"}
    exec(compile(found.group(1), "docs/protocol.md (example program)", "exec"), program)
    assert program["DEFAULTS"] == {k: v for k, v in foreign.DEFAULTS.items() if k != "signature"}
    publish_: Callable[..., str] = program["publish"]
    wait_result: Callable[..., dict[str, Any]] = program["wait_result"]

    key = ("k1", b"s3cr3t-k1")
    app = make_app(sqlite_url, signing_keys={"k1": "s3cr3t-k1"})
    async with running(app):
        signed = await anyio.to_thread.run_sync(
            lambda: publish_(db, "protocol.add", [2, 3], key=key)
        )
        kwargs = await anyio.to_thread.run_sync(
            lambda: publish_(db, "protocol.echo", kwargs={"when": 1.5e-7, "n": 10**20}, key=key)
        )
        unsigned = await anyio.to_thread.run_sync(lambda: publish_(db, "protocol.add", [1, 1]))
        outcome = await anyio.to_thread.run_sync(wait_result, db, signed, TIMEOUT)
        echoed = await anyio.to_thread.run_sync(wait_result, db, kwargs, TIMEOUT)
        letters = await dead_letters(db, {unsigned})

    assert outcome["state"] == "SUCCESS"
    assert outcome["result"] == 5
    assert echoed["result"] == {"args": [], "kwargs": {"when": 1.5e-7, "n": 10**20}}
    assert letters[unsigned].startswith("SignatureError: message is not signed")
    # The worker signed its result; check it by hand, as a foreign client would.
    (body,) = rows(db, "SELECT body FROM celeriac_documents WHERE id = ?", signed)[0]
    document = json.loads(body)
    scheme, kid, digest = document["signature"].split(":")
    assert (scheme, kid) == ("hmac-sha256", "k1")
    expected = hmac.new(b"s3cr3t-k1", foreign.canonical_form(document), hashlib.sha256)
    assert hmac.compare_digest(digest, expected.hexdigest())


# -- signing on -----------------------------------------------------------------------------


async def test_signing_unsigned_and_forged_never_run(
    db: str, sqlite_url: str, tmp_path: Path
) -> None:
    keys = {"k1": b"current secret", "k0": b"previous secret"}
    app = make_app(sqlite_url, signing_keys={k: v.decode() for k, v in keys.items()})
    marks = {
        name: tmp_path / f"{name}.mark"
        for name in ("unsigned", "signed", "old", "forged", "stranger", "retarget")
    }
    ids = {name: new_id() for name in marks}

    def touch(name: str) -> dict[str, Any]:
        return {"id": ids[name], "name": "protocol.touch", "args": [str(marks[name])]}

    messages = {
        "unsigned": touch("unsigned"),
        "signed": foreign.sign(touch("signed"), "k1", keys["k1"]),
        "old": foreign.sign(touch("old"), "k0", keys["k0"]),  # rotation: the previous key
        # Signed, then its argument changed: the path to write.
        "forged": {
            **foreign.sign(touch("forged"), "k1", keys["k1"]),
            "args": [str(marks["forged"]) + ".elsewhere"],
        },
        "stranger": foreign.sign(touch("stranger"), "k9", keys["k1"]),
        # A signed message for protocol.echo, re-aimed at protocol.touch.
        "retarget": {
            **foreign.sign({**touch("retarget"), "name": "protocol.echo"}, "k1", keys["k1"]),
            "name": "protocol.touch",
        },
    }
    async with running(app):
        for name, message in messages.items():
            await publish(db, foreign.encode(message), ids[name])
        signed = await result(db, ids["signed"])
        old = await result(db, ids["old"])
        bad = {ids[n] for n in ("unsigned", "forged", "stranger", "retarget")}
        letters = await dead_letters(db, bad)

    assert signed["body"]["state"] == old["body"]["state"] == "SUCCESS"
    assert marks["signed"].read_text() == marks["old"].read_text() == "ran"
    assert letters[ids["unsigned"]].startswith("SignatureError: message is not signed")
    assert letters[ids["forged"]].startswith("SignatureError: signature does not match")
    assert letters[ids["stranger"]].startswith(
        "SignatureError: message signed with unknown key id 'k9'"
    )
    assert letters[ids["retarget"]].startswith("SignatureError: signature does not match")
    for name in ("unsigned", "forged", "stranger", "retarget"):
        assert not left_a_mark(marks[name]), f"{name} ran"
        assert rows(db, "SELECT count(*) FROM celeriac_documents WHERE id = ?", ids[name]) == [(0,)]
    # The dead letter keeps the original bytes.
    stored = rows(db, "SELECT body FROM celeriac_dead_letters WHERE id = ?", ids["forged"])
    assert stored == [(foreign.encode(messages["forged"]),)]


async def test_forged_results_never_run_code(
    db: str, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CVE-2021-23727 through the sink: a result that names os.system.
    calls: list[str] = []
    monkeypatch.setattr(os, "system", lambda command: calls.append(command) or 0)
    forged = json.dumps(
        {
            "id": "forged-result",
            "name": "protocol.add",
            "kind": "document",
            "body": {
                "state": "FAILURE",
                "error": {
                    "type": "system",
                    "module": "os",
                    "message": "touch /tmp/pwned",
                    "args": ["touch /tmp/pwned"],
                },
            },
        }
    ).encode()
    plain = make_app(sqlite_url)
    signed = make_app(sqlite_url, signing_keys={"k1": "secret"})
    async with running(plain):
        conn = foreign.connect(db)
        try:
            conn.execute(
                "INSERT INTO celeriac_documents (id, state, body, expires_at)"
                " VALUES (?, ?, ?, NULL)",
                ("forged-result", "FAILURE", forged),
            )
        finally:
            conn.close()
        with pytest.raises(TaskError) as caught:
            await plain.result("forged-result").get_async(timeout=TIMEOUT)
        assert caught.value.type_name == "os.system"
    async with running(signed):
        with pytest.raises(SignatureError, match="not signed"):
            await signed.result("forged-result").get_async(timeout=TIMEOUT)
    assert calls == []


# -- malformed messages ------------------------------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000
HUGE = b'{"id": "huge", "name": "protocol.echo", "args": ["' + b"x" * 16 * 1024 * 1024 + b'"]}'
MALFORMED: dict[str, tuple[bytes, str]] = {
    "garbage": (b"\x00\x01\x02 not an envelope", "DecodeError: not an envelope"),
    "empty": (b"", "DecodeError: empty message body"),
    "truncated": (
        b'{"id": "truncated", "name": "protocol.add", "args": [1',
        "DecodeError: malformed envelope",
    ),
    "array": (b'["protocol.add", 1, 2]', "DecodeError: not an envelope"),
    "wrong-types": (
        b'{"id": "wrong-types", "name": "protocol.add", "args": {"a": 1}}',
        "DecodeError: malformed envelope",
    ),
    "id-is-a-number": (b'{"id": 42, "name": "protocol.add"}', "DecodeError: malformed envelope"),
    "no-name": (b'{"id": "no-name", "args": [1, 2]}', "DecodeError: malformed envelope"),
    "bad-utf8": (b'{"id": "bad-utf8", "name": "protocol.\xff"}', "DecodeError: malformed envelope"),
    "deep": (
        b'{"id": "deep", "name": "protocol.echo", "args": [' + DEEP + b"]}",
        "DecodeError: malformed envelope: nested too deeply",
    ),
    "huge": (HUGE, f"DecodeError: message of {len(HUGE)} bytes is over the 16777216 limit"),
    "msgpack-truncated": (b"\x82\xa2id\xa1x\xa4name", "DecodeError: malformed envelope"),
    "version-2": (
        b'{"v": 2, "id": "version-2", "name": "protocol.add"}',
        "VersionError: protocol version 2 is not supported",
    ),
    "unknown-task": (
        b'{"id": "unknown-task", "name": "protocol.nope"}',
        "UnknownTask: no task named 'protocol.nope' here",
    ),
    # (An event message is routed to its subscribers: tests/events.)
    "document": (
        b'{"id": "document", "name": "protocol.add", "kind": "document"}',
        "UnsupportedKind: document messages are not run",
    ),
}


async def test_malformed_messages_are_dead_lettered_and_the_worker_keeps_serving(
    db: str, sqlite_url: str
) -> None:
    app = make_app(sqlite_url)
    valid = new_id()
    async with running(app) as worker:
        for msg_id, (body, _) in MALFORMED.items():
            await publish(db, body, msg_id)
        # A valid envelope stored as TEXT instead of a BLOB (protocol.md 9.2 says BLOB).
        await publish(db, '{"id": "as-text", "name": "protocol.add", "args": [1, 2]}', "as-text")
        await publish(
            db, b'{"id": "%s", "name": "protocol.add", "args": [20, 22]}' % valid.encode(), valid
        )
        document = await result(db, valid)
        letters = await dead_letters(db, set(MALFORMED))
        with anyio.fail_after(TIMEOUT):  # the TEXT body is settled one way or the other
            while "as-text" not in letters and not rows(
                db, "SELECT state FROM celeriac_documents WHERE id = 'as-text'"
            ):
                await anyio.sleep(0.01)
                letters = await anyio.to_thread.run_sync(foreign.dead_letters, db)
        stats = worker.stats()

    assert document["body"] == {**document["body"], "state": "SUCCESS", "result": 42}
    for msg_id, (_, reason) in MALFORMED.items():
        assert letters[msg_id].startswith(reason), (msg_id, letters[msg_id][:200])
    undecodable = [m for m, (_, why) in MALFORMED.items() if why.startswith(("Decode", "Version"))]
    assert stats["rejected"] >= len(undecodable) == len(MALFORMED) - 2
    # Nothing malformed ran, nothing is left in the queue. An unknown task's caller
    # learns at once: a FAILURE document beside the dead letter.
    documents = rows(
        db, "SELECT id, state, body FROM celeriac_documents WHERE id NOT IN (?, 'as-text')", valid
    )
    assert [(i, state) for i, state, _ in documents] == [("unknown-task", "FAILURE")]
    error = json.loads(documents[0][2])["body"]["error"]
    assert (error["module"], error["type"]) == ("celeriac.errors", "UnknownTask")
    assert rows(db, "SELECT count(*) FROM celeriac_messages") == [(0,)]
    # The TEXT body is settled either way: rejected with a reason, or (should the
    # broker hand it out as bytes) run.
    if "as-text" in letters:
        assert letters["as-text"].startswith("DecodeError: message body is str, not bytes")
    else:
        assert rows(db, "SELECT state FROM celeriac_documents WHERE id = 'as-text'") == [
            ("SUCCESS",)
        ]
