"""Entry points only. Each ``jobs/<name>.py`` has ``main(argv)`` and runs as ``python -m jobs.<name>``.

Nothing imports ``jobs``.
"""
