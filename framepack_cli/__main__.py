"""`python -m framepack_cli` (needed for `accelerate launch -m framepack_cli train`)."""

from framepack_cli.cli.app import main

if __name__ == "__main__":
    main()
