"""The standalone OpenAI-compatible gateway (``igw serve``).

Modules, one job each:
``app``      the gateway: HTTP -> ``pipeline.Request`` -> pipeline -> forwarder; limits;
           aiohttp front end (``--frontend aiohttp``)
``fastfront`` the default front end, on httptools: same behaviour, about half the HTTP CPU
``proxy``    forwarding: ranked fallback before the first byte, streaming passthrough, errors
``upstream`` the keep-alive upstream HTTP client (httptools; aiohttp fallback)
``routing``  model name -> pool, per-pool engines, outcome reports to each pool's data layer
``runtime``  assembles a ``Gateway`` from the standard pipeline (``igw.stages``)
``serve``    starts replicas (simulated or real), data layers, engines and the gateway
``config``   the ``--config`` file (pydantic, strict)
``mirror``   fire-and-forget request mirroring
``errors``   OpenAI-style JSON errors
``command``  the ``igw serve`` command line
"""
