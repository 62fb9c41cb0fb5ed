"""SEED-X Nano: a small SEED-X trained from scratch on a procedural world (issue 4).

``world`` draws the scenes, ``tasks`` turns them into canonical requests and answers,
``analyser`` reads renders back without a model, and ``metrics`` scores the Nano with it.
"""
