from training.infra.memory import keep_freed_memory

keep_freed_memory()  # before torch allocates anything: large files stop paying page faults

from training.cli import main  # noqa: E402

raise SystemExit(main())
