"""The apps that ship with zflood: chat, mail and bookmarks.

Each is a client of the local API, as any third-party program would be: it reads and writes
app notes (a CBOR map with a text key `app`, see `zflood.apps.notes`) and derives its state from
them. Nothing here reaches into the engine.
"""
