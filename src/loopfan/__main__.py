from loopfan.cli import main

raise SystemExit(main())
