from hark.cli import main

raise SystemExit(main())
