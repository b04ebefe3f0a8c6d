from mesh.cli.main import main

raise SystemExit(main())
