"""The reference storage server: the seed protocols over ASGI (hypercorn + trio)."""
