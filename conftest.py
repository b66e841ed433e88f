"""Root pytest hook file: monkey-patch eventlet before anything imports socket or kombu.

In-process nameko containers hang in kombu under plain pytest without this; `nameko test`
would do it, nameko 2.14's pytest plugin no longer does.
"""
import eventlet

eventlet.monkey_patch()
