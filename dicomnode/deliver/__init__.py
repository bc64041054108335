"""Deliver: result objects to each destination by C-STORE, with retries, a circuit breaker
and a dead letter.
"""
