from mmrag.cli.main import main

raise SystemExit(main())
