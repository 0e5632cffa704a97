"""One module per ``drrl`` subcommand, each with ``add_parser(sub)`` registering its parser and ``run(args)``."""
