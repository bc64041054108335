"""Deliver: result objects to each destination by C-STORE, with retries, a circuit breaker
and a dead letter.

``plan`` queues a result's objects (one row per destination and object), ``service``
runs the rounds and keeps the rows and attempts, ``scu`` associates and sends,
``policy`` decides what an answer means, when to retry and when a breaker opens, and
``states`` names the row states.
"""
