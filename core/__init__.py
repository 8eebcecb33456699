"""The bottom layer: shared leaves (clock, money, JSON, limits, callback data).

It imports no project package, so every other layer may import it.
"""
