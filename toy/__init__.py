"""The learned toy world: training scenes from the synthetic world and the recipe that trains the toy generator.

Imports flow ``cluster``, ``rfnet``, ``engine`` <- ``toy`` <- ``jobs``; the engine reaches the trained
models only as folders on disk (the ``toy`` presets), never through an import of this package.
"""
