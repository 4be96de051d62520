"""``huey_consumer`` with gevent's monkey patching applied first, for ``-k greenlet``.

Huey's greenlet workers need the standard library patched before anything else is
imported (its documentation says to do it in the entry point), as ``dramatiq-gevent``
and ``celery -P gevent`` do by themselves.
"""

from gevent import monkey

monkey.patch_all()

from huey.bin.huey_consumer import consumer_main  # noqa: E402

if __name__ == "__main__":
    consumer_main()
