import sys

from toolkit.cli import main

# Guarded: vLLM starts its engine with multiprocessing spawn, which re-imports the main module.
if __name__ == "__main__":
    sys.exit(main())
