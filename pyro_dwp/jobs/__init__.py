"""Command-line jobs, thin adapters over :mod:`pyro_dwp.experiments`: each module's docstring is
its ``--help`` text, ``add_arguments(parser)`` its options and ``main(args) -> dict`` its run."""
