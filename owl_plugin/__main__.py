from owl_plugin.cli import main

raise SystemExit(main())
