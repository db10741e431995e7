"""Entry point of the frozen ``wsi-sam`` executable (PyInstaller runs this file as __main__)."""

from app.cli import main

raise SystemExit(main())
