"""One module per CLI subcommand: ``add_parser(sub)`` and ``run(args) -> int``."""
