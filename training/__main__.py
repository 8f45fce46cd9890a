import os

from training.infra.memory import keep_freed_memory
from training.infra.private import UMASK

keep_freed_memory()  # before torch allocates anything: large files stop paying page faults
os.umask(UMASK)  # what every command creates (stores, archives, outputs) is its owner's alone, whatever the shell's

from training.cli import main  # noqa: E402

raise SystemExit(main())
