"""One capability per module: each exposes a ``@deploy`` function and the ``Schema`` it reads."""
