"""A FastAPI order service that ships each order through another service, exactly once.

``orders.py`` takes orders and, from inside the view, ships each with an awaited
certified send to ``shipping.py``; both are plain FastAPI + async SQLAlchemy apps made
exactly-once by ``chttp_server.asgi.CertifiedMiddleware``. ``python -m
chttp_examples.fastapi_orders`` starts both under uvicorn and walks through what a
sender's retry does to each.
"""
