"""Subcommands that live in their own modules (``HELP``, ``configure(parser)``, ``main(args, console) -> int``);
``cli.EXTRA_COMMANDS`` names them."""
