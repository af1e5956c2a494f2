"""Where code runs: Ray start-up, resources, the device/dtype policy and storage (fsspec).

Nothing in ``cluster`` imports ``engine``, ``rfnet``, ``rfft`` or ``jobs``.
"""
