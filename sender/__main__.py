from sender.cli import main

raise SystemExit(main())
