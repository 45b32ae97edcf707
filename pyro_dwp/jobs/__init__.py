"""Command-line jobs: each module has ``add_arguments(parser)`` and ``main(args) -> dict``."""
