import sys

from interpbench.commands.cli import main

sys.exit(main())
