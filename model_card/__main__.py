"""Command line: ``python -m model_card --run-dir DIR [--repo-id ORG/NAME]`` writes DIR/README.md."""

from .render import main

raise SystemExit(main())
