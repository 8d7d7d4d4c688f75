from ctxroute.router.cli import main

raise SystemExit(main())
