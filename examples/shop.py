"""The quick-start app: one task of each kind, on the embedded SQLite broker.

Run it all in one process (a worker plus the ``demo`` program below)::

    celeriac dev examples.shop:app --run examples.shop:demo

or as separate processes::

    celeriac worker examples.shop:app
    celeriac call examples.shop:app examples.shop.checksum '"hello"'
"""

from __future__ import annotations

import hashlib
import os
import time

import anyio

from celeriac import App, chord, group

app = App("shop")  # broker: sqlite:///celeriac.db in the current directory


@app.task
async def fetch_price(sku: str) -> float:
    """I/O bound: a coroutine on the worker's event loop."""
    await anyio.sleep(0.05)  # stands in for an HTTP call
    return round(sum(map(ord, sku)) / 10, 2)


@app.task
def checksum(data: str) -> str:
    """CPU bound: runs in a worker thread."""
    return hashlib.sha256(data.encode()).hexdigest()[:16]


@app.task(boxed=True)
def render_invoice(order_id: int, lines: list[list[object]]) -> str:
    """Isolated: runs in a separate process."""
    total = sum(float(str(price)) * int(str(qty)) for _, price, qty in lines)
    return f"invoice #{order_id}: {len(lines)} line(s), {total:.2f} total, by pid {os.getpid()}"


@app.task
def basket_total(prices: list[float]) -> float:
    """The body of a chord: called once, with every member's result."""
    return round(sum(prices), 2)


def legacy_discount(cents: int, percent: int) -> int:
    """A plain function from older code, registered without a decorator."""
    return cents - cents * percent // 100


app.register("shop.legacy_discount", legacy_discount)


async def demo(app: App) -> int:
    """Publish a few tasks of each kind and print their results."""
    started = time.perf_counter()
    prices = [fetch_price.delay(sku) for sku in ("apple", "pear", "plum")]
    sums = [checksum.delay(word) for word in ("celery", "celeriac")]
    invoice = render_invoice.delay(42, [["apple", 0.5, 3], ["pear", 0.75, 2]])
    discount = app.send_task("shop.legacy_discount", args=(1999, 15))
    basket = chord(group(fetch_price.s(sku) for sku in ("apple", "pear")), basket_total.s())
    total = await basket.delay_async()
    rows: list[tuple[str, object, str]] = []
    for sku, result in zip(("apple", "pear", "plum"), prices, strict=True):
        rows.append((f"fetch_price({sku!r})", await result, "coroutine"))
    for word, result in zip(("celery", "celeriac"), sums, strict=True):
        rows.append((f"checksum({word!r})", await result, "thread"))
    rows.append(("render_invoice(42, ...)", await invoice, "boxed process"))
    rows.append(("shop.legacy_discount(1999, 15)", await discount, "plain callable"))
    rows.append(("chord(fetch_price x2, basket_total)", await total, "canvas"))
    for call, value, kind in rows:
        print(f"{call:<36} -> {value}   [{kind}]")
    print(f"all results in {time.perf_counter() - started:.3f}s")
    return 0
